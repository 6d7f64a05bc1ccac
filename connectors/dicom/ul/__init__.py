"""A lean DICOM Upper Layer for the SCP role, on asyncio (PS3.8, PS3.7).

Why not pynetdicom on the receive path: it runs a DUL thread per association that polls
with sleeps, a reactor thread, and per-PDU event machinery, about 3 ms of Python per
instance under the GIL. Here one event loop frames PDUs and command sets with ``struct``
and hands complete messages to the application's handlers in a thread pool.

The modules, in the order bytes pass through them::

    pdu.py          PDU and item framing: A-ASSOCIATE-RQ in; AC / RJ, P-DATA-TF,
                    A-RELEASE-RP, A-ABORT out; PDVs (PS3.8 §9.3, Annex E)
    acse.py         association negotiation as the acceptor: AE titles, limits,
                    presentation contexts and transfer syntax choice (PS3.8 §9.3.2-4)
    dimse.py        command sets, Implicit VR Little Endian (PS3.7 §6.3, Annex E)
    association.py  one association's state machine, message reassembly, dispatch
    server.py       the listening socket, TLS, the loop's thread, the handler pool

Only the acceptor (SCP) role with the services the connector offers: C-ECHO, C-STORE
and N-ACTION (storage commitment). Outbound associations (the commitment reports) still
use pynetdicom, which is not on the hot path.
"""

from connectors.dicom.ul.acse import AcceptorConfig
from connectors.dicom.ul.association import ServiceUser
from connectors.dicom.ul.server import UpperLayerServer

__all__ = ["AcceptorConfig", "ServiceUser", "UpperLayerServer"]
