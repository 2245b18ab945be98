#!/usr/bin/env bash
# Writes the seed inputs of fuzz_gguf into fuzz/corpus/fuzz_gguf: a micro DeepSeek-V3 (2 layers, 4
# experts, a 300-token tokenizer) exported by megamoe in Q8_0 and Q4_0, and a micro DeepSeek-V4
# (hash, compressed and window layers, MXFP4 experts) converted as llama.cpp's converter does
# (tests/model/test_gguf_v4.py). Small seeds keep the fuzzer fast; its mutations find the other
# layouts from them.
#   fuzz/make_gguf_seeds.sh [path/to/megamoe]
set -euo pipefail
cd "$(dirname "$0")/.."
megamoe=$(realpath "${1:-build/megamoe}")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
head -c 20000 /usr/share/common-licenses/GPL-3 >"$scratch/text.txt"
"$megamoe" tokenizer train --vocab-size 300 --input "$scratch/text.txt" --output "$scratch/tokenizer" >/dev/null
/usr/bin/python3 - "$scratch" <<'PY'
import json, sys
scratch = sys.argv[1]
tokenizer = json.load(open(f"{scratch}/tokenizer/tokenizer.json"))
vocab = max([*tokenizer["model"]["vocab"].values(), *(t["id"] for t in tokenizer["added_tokens"])]) + 1
config = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": vocab,
    "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 2,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_attention_heads": 2, "q_lora_rank": 32,
    "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32,
    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "rms_norm_eps": 1e-6, "rope_theta": 10000, "max_position_embeddings": 256, "tie_word_embeddings": False,
}
json.dump(config, open(f"{scratch}/config.json", "w"))
PY
"$megamoe" synth --model-config "$scratch/config.json" --dtype bf16 --seed 1 --output "$scratch/model" >/dev/null
cp "$scratch/tokenizer/tokenizer.json" "$scratch/tokenizer/tokenizer_config.json" "$scratch/model"
for dtype in q8_0 q4_0; do
  "$megamoe" export-gguf --model "$scratch/model" --output "fuzz/corpus/fuzz_gguf/micro-v3-$dtype.gguf" --dtype "$dtype" \
    >/dev/null
done
/usr/bin/python3 - "$PWD" "$scratch" "$megamoe" <<'PY'
import json, os, sys
root, scratch, megamoe = sys.argv[1:]
sys.path[:0] = [os.path.join(root, "tests", folder) for folder in ("model", "reference")]
os.environ["MEGAMOE_BIN"] = megamoe
import harness, test_gguf_v4
from test_gguf_model import read_gguf
config = harness.load_json(harness.config_path("v4-window-hash"))
config.update({"hidden_size": 64, "moe_intermediate_size": 32, "q_lora_rank": 32, "o_lora_rank": 32, "head_dim": 96,
               "qk_rope_head_dim": 32, "index_head_dim": 32, "compress_ratios": [0, 4, 0], "index_n_heads": 1,
               "index_topk": 2, "num_hash_layers": 1})
json.dump(config, open(f"{scratch}/v4.json", "w"))
harness.synth_with_tokenizer(f"{scratch}/v4.json", "fp8", 1, f"{scratch}/v4", f"{scratch}/tokenizer")
metadata, _ = read_gguf("fuzz/corpus/fuzz_gguf/micro-v3-q8_0.gguf")
test_gguf_v4.convert(f"{scratch}/v4", "fuzz/corpus/fuzz_gguf/micro-v4.gguf",
                     [m for m in metadata if m[0].startswith("tokenizer.")])
PY
ls -l fuzz/corpus/fuzz_gguf
