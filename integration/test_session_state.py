"""What a session reports and holds, over real gRPC on the embedded model: it stops at the model's
EOS by default."""

from __future__ import annotations

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]  # greedy: <|im_end|> (2) is its 4th token
IM_END = 2


async def test_a_session_stops_at_the_models_eos_unless_it_opts_out(stub):
    runtime_eos = list((await stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)).default_eos_token_ids)
    assert runtime_eos == [IM_END]
    by_default, opted_out = await create(stub, default_eos=True), await create(stub)
    named = await create(stub, eos=(198,))  # named ids replace the model's, opted out or not
    assert [list((await info(stub, s)).eos_token_ids) for s in (by_default, opted_out, named)] == [[IM_END], [], [198]]
    for session_id in (by_default, opted_out):
        await append(stub, session_id, PROMPT)
    stopped, ran_on = await generate(stub, by_default, 8), await generate(stub, opted_out, 8)
    assert ran_on.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS and len(ran_on.tokens) == 8
    assert ran_on.tokens.index(IM_END) == 3
    assert stopped.tokens == ran_on.tokens[:4] and stopped.done.generated_token_count == 4
    assert stopped.done.stop_reason == pb.GenerateDone.STOP_REASON_EOS
    for session_id in (by_default, opted_out, named):
        await close(stub, session_id)
