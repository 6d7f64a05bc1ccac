"""DICOM connector: a Storage SCP that never loses an instance and knows when a study is done.

The data path, one module per step::

    ul/           the DICOM Upper Layer (PS3.8) and DIMSE command sets (PS3.7) as acceptor,
                  on one asyncio loop: PDUs, negotiation, reassembly, TLS, limits
    scp.py        presentation contexts, C-ECHO / C-STORE / N-ACTION handlers
    security.py   calling AE title and source address allow-lists, TLS
    receive.py    one C-STORE: header -> durable file -> index -> commit -> status
    header.py     the attributes the timeline needs, read without decoding pixel data
                  (a struct scan for the usual data set, pydicom for the rest)
    store.py      content-addressed, fsync'd file store under CDSFUSION_DATA_DIR/dicom
    writer.py     group commit: one writer thread indexes what all associations received
    batch.py      a writer batch indexed set-based (multi-row statements), as if one by one
    index.py      source item, patient, study / series / instance rows, duplicate policy
    stable.py     stable-study detection in the database; the study's anchor event
    routing.py    YAML routing rules: which studies are anchors, per-rule quiet period
    commitment.py storage commitment (N-ACTION in, N-EVENT-REPORT out)
    listener.py   the engine component (``cdsfusion serve``), detector thread, readiness
    receivers.py  optional extra receiver processes on the same port (SO_REUSEPORT)
    status.py     the DIMSE statuses this SCP answers, with their PS3.4 / PS3.7 sections

Settings (environment, prefix ``CDSFUSION_``):

============================== ============== ===============================================
variable                       default        meaning
============================== ============== ===============================================
DICOM_PORT                     11112          SCP port; 0 disables the connector
DICOM_AE_TITLE                 CDSFUSION      the SCP's AE title
DICOM_DUPLICATE_POLICY         keep-newest    same SOPInstanceUID, other bytes: keep-newest
                                              (answer B000) or reject (answer 0111)
DICOM_ALLOWED_AE_TITLES        (empty)        calling AE titles admitted, comma-separated;
                                              empty admits any in embedded mode and is
                                              refused at start in production; ``*`` = any
DICOM_ALLOWED_NETWORKS         (empty)        source CIDRs admitted, comma-separated;
                                              empty admits any address
DICOM_TLS_CERT_FILE / _KEY_FILE (unset)       PEM certificate and key: the port speaks TLS
DICOM_TLS_CA_FILE              (unset)        PEM CA: client certificates required (mTLS)
DICOM_MAX_ASSOCIATIONS         16             simultaneous associations per process
DICOM_MAX_PDU_SIZE             262144         largest PDU accepted, bytes
DICOM_RECEIVER_PROCESSES       1              processes accepting on the port
DICOM_QUIET_PERIOD_S           30             seconds without an instance: study complete
DICOM_STUDY_HARD_CAP_S         3600           seconds after a version started: complete
DICOM_ROUTING_RULES_FILE       (unset)        YAML routing rules (default: CR/DX CHEST anchor)
DICOM_COMMITMENT_PEERS         (empty)        ``AE=host:port`` list for commitment reports
============================== ============== ===============================================

DICOM dates and times without TimezoneOffsetFromUTC are read in ``CDSFUSION_SITE_TIMEZONE``;
IssuerOfPatientID goes through ``CDSFUSION_ISSUER_MAP`` like every other identifier system.
"""
