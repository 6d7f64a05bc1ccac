"""The Upper Layer's pure parts: PDU framing, DIMSE command sets, negotiation."""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation

from connectors.dicom.ul import acse, dimse, pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CONFIG = acse.AcceptorConfig(
    ae_title="CDSFUSION",
    max_pdu_size=16384,
    max_associations=2,
    abstract_syntaxes=frozenset({CT, VERIFICATION}),
    transfer_syntax_preference=(JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    implementation_class_uid="1.2.3.4",
    implementation_version_name="TEST_1",
)


def pynetdicom_rq(
    *,
    called: str = "CDSFUSION",
    calling: str = "MODALITY",
    contexts: list[tuple[str, list[str]]] | None = None,
    max_length: int = 32768,
    role: str | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it (an independent encoder)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    proposed = []
    for index, (abstract, syntaxes) in enumerate(contexts or [(CT, [ExplicitVRLittleEndian])]):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * index + 1
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    notification = MaximumLengthNotification()
    notification.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    user: list[object] = [notification, implementation]
    if role is not None:
        item = SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid = role
        item.scu_role, item.scp_role = True, False
        user.append(item)
    primitive.user_information = user
    encoded = A_ASSOCIATE_RQ()
    encoded.from_primitive(primitive)
    return bytes(encoded.encode())


def body(raw: bytes) -> bytes:
    _, length = pdu.read_header(raw[:6])
    assert length == len(raw) - 6
    return raw[6:]


def test_associate_rq_from_pynetdicom_parses() -> None:
    raw = pynetdicom_rq(
        contexts=[(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), (VERIFICATION, ["1.2"])],
        role=CT,
    )
    assert pdu.read_header(raw[:6])[0] == pdu.A_ASSOCIATE_RQ
    request = pdu.parse_associate_rq(body(raw))
    assert request.protocol_version == 1
    assert (request.called_ae_title, request.calling_ae_title) == ("CDSFUSION", "MODALITY")
    assert request.application_context == pdu.APPLICATION_CONTEXT_NAME
    assert request.max_length == 32768
    assert request.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert request.contexts == (
        pdu.PresentationContextProposal(1, CT, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        pdu.PresentationContextProposal(3, VERIFICATION, ("1.2",)),
    )
    assert request.roles == {CT: (1, 0)}


def test_associate_ac_decodes_in_pynetdicom() -> None:
    request = pdu.parse_associate_rq(
        body(pynetdicom_rq(contexts=[(CT, [ExplicitVRLittleEndian]), ("1.2.3", ["1.2"])]))
    )
    decision = acse.negotiate(request, CONFIG, admits_calling_ae=lambda _: True, associations=0)
    assert isinstance(decision, acse.Acceptance)
    raw = pdu.encode_associate_ac(
        request,
        list(decision.results),
        max_length=16384,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="TEST_1",
    )
    decoded = A_ASSOCIATE_AC()
    decoded.decode(raw)
    assert decoded.to_primitive().called_ae_title == "CDSFUSION"
    user = decoded.user_information
    assert user.maximum_length == 16384
    assert user.implementation_class_uid == "1.2.3.4"
    assert user.implementation_version_name == "TEST_1"
    results = {
        cx.context_id: (cx.result, cx.transfer_syntax) for cx in decoded.presentation_context
    }
    assert results == {
        1: (pdu.CONTEXT_ACCEPTANCE, ExplicitVRLittleEndian),
        3: (pdu.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, "1.2"),
    }
    assert decision.contexts == {1: (CT, ExplicitVRLittleEndian)}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x01" + bytes(40), "shorter than its fixed fields"),
        (bytes(68) + b"\x10\x00\x00\x20abc", "longer than its PDU"),
        (bytes(68) + b"\x10\x00", "item header truncated"),
        (bytes(68), "without Application Context"),
        (bytes(68) + b"\x10\x00\x00\x03abc", "without Presentation Context"),
        (
            bytes(68) + b"\x10\x00\x00\x01a" + b"\x20\x00\x00\x08\x01\x00\x00\x00\x30\x00\x00\x00",
            "without abstract or transfer syntax",
        ),
        (
            bytes(68) + b"\x10\x00\x00\x01a" + b"\x20\x00\x00\x08\x01\x00\x00\x00\x99\x00\x00\x00",
            "unexpected sub-item",
        ),
    ],
)
def test_malformed_associate_rq_is_an_error(raw: bytes, message: str) -> None:
    with pytest.raises(pdu.PDUError, match=message):
        pdu.parse_associate_rq(raw)


def test_malformed_user_information_is_an_error() -> None:
    raw = bytearray(body(pynetdicom_rq()))
    at = raw.index(b"\x51\x00\x00\x04")
    raw[at + 3] = 3  # Maximum Length sub-item of 3 bytes; the item lengths still add up
    raw[at + 4 : at + 8] = b"\x00\x00\x80"
    user = raw.index(b"\x50\x00")
    (length,) = struct.unpack_from(">H", raw, user + 2)
    struct.pack_into(">H", raw, user + 2, length - 1)
    with pytest.raises(pdu.PDUError, match="Maximum Length"):
        pdu.parse_associate_rq(bytes(raw))


def test_negotiation_rejects_and_chooses_transfer_syntax() -> None:
    def decide(**kwargs: object) -> acse.Rejection | acse.Acceptance:
        request = pdu.parse_associate_rq(body(pynetdicom_rq(**kwargs)))  # type: ignore[arg-type]
        return acse.negotiate(
            request, CONFIG, admits_calling_ae=lambda t: t != "INTRUDER", associations=0
        )

    called = decide(called="OTHER")
    assert isinstance(called, acse.Rejection)
    assert (called.result, called.source, called.reason) == (1, 1, 7)
    calling = decide(calling="INTRUDER")
    assert isinstance(calling, acse.Rejection) and calling.reason == 3
    assert calling.encode() == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"
    chosen = decide(
        contexts=[
            (CT, [ImplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRLittleEndian]),
            (CT, ["1.2.840.10008.1.2.4.999"]),
        ]
    )
    assert isinstance(chosen, acse.Acceptance)
    assert [(r.context_id, r.result) for r in chosen.results] == [(1, 0), (3, 4)]
    assert chosen.contexts == {1: (CT, JPEGBaseline8Bit)}  # our preference, not the order


def test_negotiation_limits_associations() -> None:
    request = pdu.parse_associate_rq(body(pynetdicom_rq()))
    full = acse.negotiate(request, CONFIG, admits_calling_ae=lambda _: True, associations=2)
    assert isinstance(full, acse.Rejection)
    assert (full.result, full.source, full.reason) == (2, 3, 2)
    assert full.why == "local limit exceeded"


def test_p_data_round_trip_and_fragmentation() -> None:
    payload = bytes(range(256)) * 40
    whole = pdu.encode_p_data(3, payload, command=False, max_length=0)
    assert pdu.read_header(whole[:6]) == (pdu.P_DATA_TF, len(payload) + 6)
    assert pdu.parse_pdvs(whole[6:]) == [(3, pdu.PDV_LAST, payload)]

    fragmented = pdu.encode_p_data(5, payload, command=True, max_length=1000)
    pdvs = []
    offset = 0
    while offset < len(fragmented):
        pdu_type, length = pdu.read_header(fragmented[offset : offset + 6])
        assert pdu_type == pdu.P_DATA_TF and length <= 1000
        pdvs += pdu.parse_pdvs(fragmented[offset + 6 : offset + 6 + length])
        offset += 6 + length
    assert b"".join(v for _, _, v in pdvs) == payload
    assert all(c == pdu.PDV_COMMAND for _, c, _ in pdvs[:-1])
    assert pdvs[-1][1] == pdu.PDV_COMMAND | pdu.PDV_LAST
    assert {cid for cid, _, _ in pdvs} == {5}
    # pynetdicom reads the same PDVs
    decoded = P_DATA_TF()
    decoded.decode(fragmented[: 6 + 1000])
    assert decoded.presentation_data_value_items[0].presentation_data_value[1:] == payload[:994]


def test_several_pdvs_in_one_p_data_tf() -> None:
    two = b"".join(
        struct.pack(">IBB", len(v) + 2, cid, control) + v
        for cid, control, v in [(1, 1, b"ab"), (1, 3, b"cd"), (1, 0, b"")]
    )
    assert pdu.parse_pdvs(two) == [(1, 1, b"ab"), (1, 3, b"cd"), (1, 0, b"")]


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x09\x01\x03abc", b"\x00\x00\x00\x01\x01\x03"],
)
def test_malformed_p_data_is_an_error(raw: bytes) -> None:
    with pytest.raises(pdu.PDUError):
        pdu.parse_pdvs(raw)


def test_control_pdus() -> None:
    assert pdu.encode_release_rp() == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.encode_abort(2, 6) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
    assert pdu.read_header(b"\x09\x00\x00\x00\x00\x04") == (9, 4)
    assert 9 not in pdu.PDU_TYPES


def test_command_round_trip_with_pydicom() -> None:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    raw = dimse.request(
        dimse.C_STORE_RQ, message_id=7, sop_class=CT, sop_instance="1.2.3", has_data_set=True
    )
    command = dimse.parse_command(raw)
    assert command.command_field == dimse.C_STORE_RQ
    assert command.message_id == 7
    assert command.has_data_set
    assert command.uid(dimse.AffectedSOPClassUID) == CT
    assert command.uid(dimse.AffectedSOPInstanceUID) == "1.2.3"
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPInstanceUID == "1.2.3"

    answer = dimse.response(
        dimse.C_STORE_RSP,
        message_id=7,
        status=0xB000,
        sop_class=CT,
        sop_instance="1.2.3",
        error_comment="replaced an earlier instance with the same UID",
    )
    rsp = read_dataset(BytesIO(answer), True, True)
    assert rsp.CommandField == dimse.C_STORE_RSP
    assert rsp.MessageIDBeingRespondedTo == 7
    assert rsp.CommandDataSetType == dimse.NO_DATA_SET
    assert rsp.Status == 0xB000
    assert rsp.ErrorComment == "replaced an earlier instance with the same UID"
    assert rsp.AffectedSOPInstanceUID == "1.2.3"
    assert rsp.CommandGroupLength == len(answer) - 12
    assert len(answer) % 2 == 0


def test_n_action_response_carries_the_action_type() -> None:
    raw = dimse.request(
        dimse.N_ACTION_RQ,
        message_id=2,
        sop_class="1.2.840.10008.1.20.1",
        sop_instance="1.2.840.10008.1.20.1.1",
        has_data_set=True,
        action_type_id=1,
        requested=True,
    )
    command = dimse.parse_command(raw)
    assert command.uid(dimse.RequestedSOPInstanceUID) == "1.2.840.10008.1.20.1.1"
    assert command.us(dimse.ActionTypeID) == 1
    answer = dimse.parse_command(
        dimse.response(dimse.N_ACTION_RSP, message_id=2, status=0, action_type_id=1)
    )
    assert answer.us(dimse.ActionTypeID) == 1 and answer.us(dimse.Status) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x01\x04\x00",  # header truncated
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x00",  # value longer than the set
        b"\x08\x00\x18\x00\x02\x00\x00\x00ab",  # group 0008 in a command set
    ],
)
def test_malformed_command_is_an_error(raw: bytes) -> None:
    with pytest.raises(dimse.DIMSEError):
        dimse.parse_command(raw)


def test_command_without_required_fields() -> None:
    command = dimse.parse_command(dimse.encode_command([]))
    with pytest.raises(dimse.DIMSEError):
        _ = command.command_field
    with pytest.raises(dimse.DIMSEError):
        _ = command.has_data_set
    assert command.message_id == 0
    bad = dimse.parse_command(dimse.encode_command([(dimse.CommandField, b"\x01")]))
    with pytest.raises(dimse.DIMSEError):
        _ = bad.command_field
