"""`kakeya serve --model DIR` as a new user runs it, on families beyond the hand-written decoders:
a saved Gemma 2 (hybrid sliding-window and full layers, soft-capping) is served past its window
with transformers' own tokens, and a model without attention layers is refused with the reason."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import torch

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from .test_serve_process import _wait_serving

WINDOW = 16


def _save_gemma2(path) -> torch.nn.Module:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Gemma2ForCausalLM(config).eval()
    model.save_pretrained(path)
    model.set_attn_implementation("eager")
    return model


def _serve(args, socket_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", str(socket_path),
         "--log-format", "json", "--grace-s", "1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_a_saved_hybrid_model_is_served_past_its_window_with_transformers_tokens(tmp_path):
    reference = _save_gemma2(tmp_path / "gemma2")
    prompt = torch.randint(3, 256, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.inference_mode():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, 40:].tolist()
    socket_path = tmp_path / "kakeya.sock"
    process = _serve(["--model", str(tmp_path / "gemma2")], socket_path)
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            _wait_serving(channel, process)
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            info = stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=30)
            assert (info.architecture, info.forward_path) == ("gemma2", "generic")
            assert "2 of 2 layers windowed-slab: a sliding window of 16 tokens" in info.attention_path
            assert info.weights_held_as.startswith("float32")
            session_id = stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True), timeout=30).session_id
            stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=prompt[:25]), timeout=30)
            stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=prompt[25:]), timeout=30)
            tokens = [r.token_id for r in stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=48),
                                                        timeout=120) if r.WhichOneof("payload") == "token_id"]
        assert tokens == expected
    finally:
        process.kill()
        process.wait()


def test_a_model_without_attention_layers_is_refused_at_load(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4)).save_pretrained(
        tmp_path / "mamba")
    process = _serve(["--model", str(tmp_path / "mamba")], tmp_path / "kakeya.sock")
    try:
        assert process.wait(timeout=300) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    failed = [r for r in records if r["event"] == "model_load_failed"]
    assert failed and "layers 0, 1 do not attend through transformers' attention interface" in failed[0]["error"]
