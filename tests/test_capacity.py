"""Capacity records, the directory and node choice: pure, no network."""

from __future__ import annotations

import msgpack
import pytest

from pointillist.network.directory import PeerDirectory
from pointillist.requester.ranking import COLD_MODEL_S, estimate_seconds, rank_nodes
from pointillist.protocol.capacity import (
    CAPACITY_PAYLOAD_TYPE,
    MAX_CLOCK_SKEW_S,
    MAX_RECORD_BYTES,
    CapacityRecord,
    decode_record,
    encode_record,
)
from pointillist.protocol.dsse import pae, sign_envelope
from pointillist.protocol.errors import RemoteError
from pointillist.protocol.identity import Identity

NOW = 1_000_000
A, B, C = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
TINY = "6284f5af008435e404a39621e5afb8bb679b2458f583be73770a000e45eed048"
OTHER = "ab" * 32


def record(identity=A, seq=1, models=(("tiny-sd", TINY),), speed=10.0, queue_free=8, accepting=True,
           issued=NOW, ttl=90, **over) -> CapacityRecord:
    fields = dict(
        peerId=identity.peer_id,
        addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{identity.peer_id}"],
        device={"kind": "cpu", "name": "test cpu", "vramTotal": 0, "vramFree": 0},
        models=[{"name": n, "digest": d, "pipeline": "StableDiffusionPipeline", "maxSide": 2048} for n, d in models],
        speed={"stepsPerS": speed, "refWidth": 256, "refHeight": 256},
        queueFree=queue_free, queueSize=8, accepting=accepting, version="0.1.0",
        seq=seq, issuedAt=issued, expiresAt=issued + ttl,
    )
    fields.update(over)
    return CapacityRecord.model_validate(fields)


def test_round_trip():
    r = record()
    assert decode_record(encode_record(A, r), NOW, sender=A.peer_id) == r


def test_signed_by_another_key_is_dropped():
    r = record(identity=A)
    env = sign_envelope(B, CAPACITY_PAYLOAD_TYPE, r.to_payload())
    data = msgpack.packb({"payloadType": env.payload_type, "payload": env.payload, "keyid": env.keyid, "sig": env.sig})
    with pytest.raises(RemoteError, match="signed by"):
        decode_record(data, NOW)


def test_claimed_keyid_without_its_signature_is_dropped():
    r = record(identity=A)
    data = msgpack.packb({"payloadType": CAPACITY_PAYLOAD_TYPE, "payload": r.to_payload(), "keyid": A.peer_id,
                          "sig": B.sign(pae(CAPACITY_PAYLOAD_TYPE, r.to_payload()))})
    with pytest.raises(RemoteError, match="not signed"):
        decode_record(data, NOW)


def test_published_by_someone_else_is_dropped():
    with pytest.raises(RemoteError, match="published by"):
        decode_record(encode_record(A, record()), NOW, sender=B.peer_id)


def test_expired_and_overlong_records_are_dropped():
    with pytest.raises(RemoteError, match="expired"):
        decode_record(encode_record(A, record()), NOW + 91)
    with pytest.raises(RemoteError, match="lifetime"):
        decode_record(encode_record(A, record(ttl=100_000)), NOW)


@pytest.mark.parametrize("issued", [NOW + MAX_CLOCK_SKEW_S + 1, NOW + 10_000])
def test_records_issued_in_the_future_are_dropped(issued):
    # Within MAX_TTL_S of its own issuedAt, so only the clock bound can refuse it: a record
    # dated ahead would otherwise stay live after its node stops renewing it.
    with pytest.raises(RemoteError, match="issued in the future"):
        decode_record(encode_record(A, record(issued=issued, ttl=90)), NOW)


def test_records_within_the_clock_skew_are_kept():
    r = record(issued=NOW + MAX_CLOCK_SKEW_S, ttl=90)
    assert decode_record(encode_record(A, r), NOW) == r


@pytest.mark.parametrize("data,reason", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "must be a map"),
    (msgpack.packb({"payloadType": 1, "payload": b"", "keyid": "k", "sig": b""}), "wrong types"),
    (b"\x00" * (MAX_RECORD_BYTES + 1), "exceeds"),
])
def test_garbage_is_dropped(data, reason):
    with pytest.raises(RemoteError, match=reason):
        decode_record(data, NOW)


def test_unknown_fields_are_dropped():
    payload = record().to_payload().replace(b'"v":3', b'"v":3,"extra":true')
    env = sign_envelope(A, CAPACITY_PAYLOAD_TYPE, payload)
    data = msgpack.packb({"payloadType": env.payload_type, "payload": env.payload, "keyid": env.keyid, "sig": env.sig})
    with pytest.raises(RemoteError, match="extra"):
        decode_record(data, NOW)


def _signed(payload: bytes) -> bytes:
    env = sign_envelope(A, CAPACITY_PAYLOAD_TYPE, payload)
    return msgpack.packb({"payloadType": env.payload_type, "payload": env.payload, "keyid": env.keyid, "sig": env.sig})


def test_v2_records_say_each_models_family_and_warmth():
    r = record(models=(("tiny-sd", TINY), ("other", OTHER)))
    r = r.model_copy(update={"models": [r.models[0].model_copy(update={"family": "sd15"}),
                                        r.models[1].model_copy(update={"warm": False})]})
    back = decode_record(encode_record(A, r), NOW)
    assert back.v == 3 and [(m.family, m.warm) for m in back.models] == [("sd15", True), (None, False)]


def test_v3_records_say_whether_the_node_is_reachable_and_may_serve_no_model():
    r = record().model_copy(update={"reachability": "private"})
    assert decode_record(encode_record(A, r), NOW).reachability == "private"
    relay_only = record().model_copy(update={"models": []})  # a bootstrap/relay without a GPU
    assert decode_record(encode_record(A, relay_only), NOW).models == []
    with pytest.raises(RemoteError, match="reachability"):
        decode_record(_signed(r.to_payload().replace(b'"private"', b'"sometimes"')), NOW)


def test_v2_records_of_older_nodes_still_read():
    v2 = record().to_payload().replace(b'"v":3', b'"v":2').replace(b',"reachability":"unknown"', b"")
    assert b"reachability" not in v2
    back = decode_record(_signed(v2), NOW)
    assert back.v == 2 and back.reachability == "unknown"
    with pytest.raises(RemoteError, match="v3"):  # v3 members in a v2 record: not a v2 record
        decode_record(_signed(v2.replace(b'"v":2', b'"v":2,"reachability":"public"')), NOW)
    no_models = record().model_copy(update={"models": []}).to_payload()
    with pytest.raises(RemoteError, match="at least one model"):
        decode_record(_signed(no_models.replace(b'"v":3', b'"v":2').replace(b',"reachability":"unknown"', b"")), NOW)


def test_v1_records_of_older_nodes_still_read_and_count_as_warm():
    payload = record().to_payload().replace(b'"v":3', b'"v":2').replace(b',"reachability":"unknown"', b"")
    v1 = payload.replace(b'"v":2', b'"v":1').replace(b',"family":null', b"").replace(b',"warm":true', b"")
    assert b"warm" not in v1 and b"family" not in v1
    back = decode_record(_signed(v1), NOW)
    assert back.v == 1 and back.models[0].warm and back.models[0].family is None
    with pytest.raises(RemoteError, match="v2"):  # v2 members in a v1 record: not a v1 record
        decode_record(_signed(v1.replace(b'"maxSide":2048', b'"maxSide":2048,"warm":false')), NOW)
    with pytest.raises(RemoteError):
        decode_record(_signed(payload.replace(b'"v":2', b'"v":4')), NOW)


def test_directory_keeps_newest_and_refuses_replays():
    d = PeerDirectory()
    assert d.offer(record(seq=2), NOW)
    assert not d.offer(record(seq=1), NOW)  # older
    assert not d.offer(record(seq=2), NOW)  # replay
    assert d.offer(record(seq=3, queue_free=0), NOW)
    assert d.get(A.peer_id).queue_free == 0


def test_directory_expires():
    d = PeerDirectory()
    d.offer(record(identity=A, ttl=10), NOW)
    d.offer(record(identity=B, ttl=100), NOW)
    assert {r.peer_id for r in d.live(NOW + 50)} == {B.peer_id}


def test_directory_is_bounded():
    d = PeerDirectory(max_peers=2)
    assert d.offer(record(identity=A), NOW) and d.offer(record(identity=B), NOW)
    assert not d.offer(record(identity=C), NOW)


def test_ranking_by_model_capacity_and_speed():
    records = [
        record(identity=A, speed=5.0),
        record(identity=B, speed=50.0),
        record(identity=C, speed=500.0, models=(("other", OTHER),)),
    ]
    ranked = rank_nodes(records, "tiny-sd", steps=20, width=512, height=512)
    assert [c.record.peer_id for c in ranked] == [B.peer_id, A.peer_id]
    assert [c.record.peer_id for c in rank_nodes(records, OTHER, 20, 512, 512)] == [C.peer_id]
    assert rank_nodes(records, "nope", 20, 512, 512) == []


def test_ranking_skips_full_or_closed_and_counts_latency_and_queue():
    records = [record(identity=A, queue_free=0), record(identity=B, accepting=False), record(identity=C)]
    assert [c.record.peer_id for c in rank_nodes(records, "tiny-sd", 4, 64, 64)] == [C.peer_id]
    fast_far, slow_near = record(identity=A, speed=100.0), record(identity=B, speed=90.0)
    ranked = rank_nodes([fast_far, slow_near], "tiny-sd", 4, 256, 256, latency_s={A.peer_id: 1.0})
    assert ranked[0].record.peer_id == B.peer_id
    busy = record(identity=A, speed=100.0, queue_free=2)  # 6 queued
    assert rank_nodes([busy, slow_near], "tiny-sd", 4, 256, 256)[0].record.peer_id == B.peer_id
    assert rank_nodes([busy, slow_near], "tiny-sd", 4, 256, 256, exclude={B.peer_id})[0].record.peer_id == A.peer_id


def test_ranking_prefers_a_node_with_the_model_warm():
    def with_warmth(identity, warm, speed):
        r = record(identity=identity, speed=speed)
        return r.model_copy(update={"models": [r.models[0].model_copy(update={"warm": warm})]})

    cold_fast, warm_slower = with_warmth(A, False, 50.0), with_warmth(B, True, 20.0)
    ranked = rank_nodes([cold_fast, warm_slower], "tiny-sd", 20, 512, 512)
    assert [c.peer_id for c in ranked] == [B.peer_id, A.peer_id]
    assert ranked[1].estimate_s - estimate_seconds(cold_fast, 20, 512, 512) == pytest.approx(COLD_MODEL_S)
    # A cold node is still chosen when the warm one is far slower than a model load.
    crawling = with_warmth(B, True, 0.5)
    assert rank_nodes([cold_fast, crawling], "tiny-sd", 20, 512, 512)[0].peer_id == A.peer_id
