"""ChunkRelay: the bytes it relays parse to what pb.generate_chunk builds from the parsed
runtime chunk (protobuf's own parser is the judge), for every kind of chunk."""

from __future__ import annotations

import pytest

from gateway import pb
from gateway.relay import ChunkRelay, encode_generate
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2

LOGPROBS = [
    common_pb2.TokenLogprobs(
        sampled=common_pb2.TokenLogprob(token_id=7, token="é", logprob=-0.25),
        top=[common_pb2.TokenLogprob(token_id=8, token="x", logprob=-1.5)],
    )
]
CHUNKS = {
    "tokens and text": runtime_pb2.GenerateResponse(
        request_id="alice/r1", token_ids=[1, 300, 70000], text=" héllo"
    ),
    "logprobs": runtime_pb2.GenerateResponse(
        request_id="alice/r1", token_ids=[7], text="é", logprobs=LOGPROBS
    ),
    "empty": runtime_pb2.GenerateResponse(request_id="alice/r1"),
    "no request id": runtime_pb2.GenerateResponse(token_ids=[5], text="a"),
    "long request id": runtime_pb2.GenerateResponse(request_id="o/" + "r" * 200, text="a"),
    "last, stop string": runtime_pb2.GenerateResponse(
        request_id="alice/r1",
        token_ids=[2],
        text="!",
        finish_reason=common_pb2.FINISH_REASON_STOP,
        stop_string="!",
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=4, cached_prompt_tokens=1),
        timings=common_pb2.Timings(queue_ns=1, prefill_ns=2, decode_ns=3, total_ns=6),
    ),
    "last, length": runtime_pb2.GenerateResponse(
        finish_reason=common_pb2.FINISH_REASON_LENGTH, usage=common_pb2.Usage(prompt_tokens=3)
    ),
}


@pytest.mark.parametrize("request_id", ["r1", "", "ü" * 100])
@pytest.mark.parametrize("name", list(CHUNKS))
def test_relayed_chunk_is_the_converted_chunk(name: str, request_id: str) -> None:
    chunk = CHUNKS[name]
    relayed = ChunkRelay(request_id)(chunk.SerializeToString())
    got = gateway_pb2.GatewayGenerateResponse.FromString(encode_generate(relayed))
    assert got == pb.generate_chunk(request_id, chunk)
    assert isinstance(relayed, bytes) == (not chunk.finish_reason and not chunk.usage.ByteSize())


def test_a_chunk_encoded_out_of_order_is_converted() -> None:
    """Fields after request_id in another order, or unknown ones: parsed, not spliced."""
    chunk = runtime_pb2.GenerateResponse(token_ids=[4], text="b")
    raw = chunk.SerializeToString() + b"\x0a\x03a/b"  # request_id last
    relayed = ChunkRelay("r")(raw)
    assert not isinstance(relayed, bytes)
    assert relayed == pb.generate_chunk("r", chunk)
    unknown = ChunkRelay("r")(chunk.SerializeToString() + b"\x50\x01")  # field 10, varint
    assert not isinstance(unknown, bytes)


def _merged_reference(chunks: list[runtime_pb2.GenerateResponse]) -> runtime_pb2.GenerateResponse:
    """protobuf's own merge of the chunks (repeated fields appended, the rest from the last
    chunk that sets it), with the texts joined."""
    merged = runtime_pb2.GenerateResponse()
    for chunk in chunks:
        merged.MergeFrom(chunk)
    merged.text = "".join(c.text for c in chunks)
    return merged


SEQUENCES = {
    "plain": ["tokens and text", "no request id", "logprobs", "empty", "tokens and text"],
    "up to the last": ["tokens and text", "logprobs", "last, stop string"],
    "last only in two": ["empty", "last, length"],
    "long ids": ["long request id", "tokens and text"],
}


@pytest.mark.parametrize("request_id", ["r1", "ü" * 100])
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_merged_chunks_are_the_chunks_merged(name: str, request_id: str) -> None:
    chunks = [CHUNKS[n] for n in SEQUENCES[name]]
    merged = ChunkRelay(request_id).merge([c.SerializeToString() for c in chunks])
    got = gateway_pb2.GatewayGenerateResponse.FromString(encode_generate(merged))
    assert got == pb.generate_chunk(request_id, _merged_reference(chunks))
    # One chunk is relayed as it always was.
    one = ChunkRelay(request_id).merge([chunks[0].SerializeToString()])
    assert one == ChunkRelay(request_id)(chunks[0].SerializeToString())
