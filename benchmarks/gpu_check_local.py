"""GPU check of the local backend: the same code on CUDA and CPU, a 2-layer SmolLM2 GGUF, plus full-depth timing.

Run on a GPU machine from the repository root, with the 2-layer file from make_small_gguf.py in .gpu/ and the gguf
wheel installed: PYTHONPATH=src python3 benchmarks/gpu_check_local.py
"""
import copy, json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TQDM_DISABLE"] = "1"
import torch
from deltamem.llm.local import LocalLLM
from deltamem.llm.base import CompletionRequest, Message

out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
path = ".gpu/smol-2layer.gguf"
gpu, cpu = LocalLLM(model_path=path, device="cuda"), LocalLLM(model_path=path, device="cpu")
out["model_ids"] = [gpu.model_id, cpu.model_id]
prompts = [f"Question {i}: name a city in country number {i} and say one fact about it." for i in range(8)]
agree, gpu_s, cpu_s = 0, 0.0, 0.0
for p in prompts:
    req = CompletionRequest((Message("user", p),), max_tokens=24)
    a, b = gpu.complete(req), cpu.complete(req)
    agree += a.text == b.text; gpu_s += a.seconds; cpu_s += b.seconds
    again = gpu.complete(req); assert again.text == a.text, "CUDA greedy is not deterministic"
out["cpu_gpu_same_text"] = f"{agree}/{len(prompts)}"
out["seconds_per_call"] = {"cuda": gpu_s / len(prompts), "cpu": cpu_s / len(prompts)}
ids = gpu.encode_chat([Message("user", prompts[0])])
dec = gpu.decode(ids, 24)
out["score_reproduces_greedy_on_cuda"] = list(gpu.score(ids, list(dec.ids)).greedy_ids) == list(dec.ids)
full = gpu.forward(ids + list(dec.ids[:5]))
pre = gpu.forward(ids)
part = gpu.forward(list(dec.ids[:5]), past_key_values=pre.past_key_values)
out["kv_reuse_max_abs_diff"] = float((full.logits[-1] - part.logits[-1]).abs().max())
att = gpu.forward(ids, output_attentions=True).attentions
out["attention_layers_shape"] = [len(att), list(att[0].shape)]

# Full-depth timing: random weights in SmolLM2-135M's shapes (30 layers); time depends on shapes, not values.
from transformers import AutoModelForCausalLM
config = copy.deepcopy(gpu.model.config); config.num_hidden_layers = 30
torch.manual_seed(0)
gpu.model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to("cuda").eval()
long_prompt = [Message("user", " ".join(["The quick brown fox jumps over the lazy dog."] * 140))]
ids = gpu.encode_chat(long_prompt)
for _ in range(2): gpu.decode(ids[:64], 4)
torch.cuda.synchronize(); t = time.perf_counter(); gpu.forward(ids); torch.cuda.synchronize(); prefill = time.perf_counter() - t
t = time.perf_counter(); d = gpu.decode(ids, 32); torch.cuda.synchronize(); total = time.perf_counter() - t
out["full_depth_random"] = {"prompt_tokens": len(ids), "prefill_s": prefill, "prefill_plus_32_decode_s": total,
                            "decoded": len(d.ids), "decode_tok_per_s": len(d.ids) / max(total - prefill, 1e-9)}
print(json.dumps(out, indent=1))
