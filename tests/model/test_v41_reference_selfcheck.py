"""Checks of the DeepSeek-V4.1 PyTorch reference itself, without megamoe: the round trips of spec 3.7 on
hand-made values, the checkpoint codecs on known bytes, the Engram token map, primes and multipliers
against the released values, whole-prompt logits against the reference's own token-by-token decoder
on every tiny config written in the official layout, the upstream index_k decode quirk, and that the
features the tiny configs exist for really change the logits."""
import collections
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

import harness  # first: puts tests/reference on the path
import deepseek_v41 as v41
import safetensors_np
from deepseek_v41 import q4e4, q4e8, q8

torch.set_grad_enabled(False)
TOKEN_COUNT = 48
CONFIGS = ("v41-roles-engram", "v41-hc2-groups1", "v41-mtp-r1")


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def padded(values, size):
    return f64(list(values) + [0.0] * (size - len(values)))


def config(name):
    return harness.load_json(os.path.join(harness.CONFIG_DIR, name + ".json"))


TOKENIZER = v41.byte_level_tokenizer()
_TEMP = tempfile.TemporaryDirectory()


def tokenizer_path():
    path = os.path.join(_TEMP.name, "tokenizer.json")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(TOKENIZER, f, ensure_ascii=False)
    return path


def prompt(name, seed, count=TOKEN_COUNT):
    """Token ids below both the vocabulary and the tokenizer's size."""
    limit = min(config(name)["text_config"]["vocab_size"], len(v41.vocabulary_strings(tokenizer_path())))
    return harness.random_tokens(limit, count, seed)


def reference(root, weights):
    return v41.Reference(root, lambda name: torch.from_numpy(weights[name]), tokenizer_path())


class RoundTrips(unittest.TestCase):
    def test_q8_blocks_of_32_with_fp32_power_of_two_scales(self):
        x = padded([448.0, 1.0625, 3.3], 32)
        y = q8(torch.cat([x, padded([896.5, 10.0], 32)]))
        self.assertEqual(y[:3].tolist(), [448.0, 1.0, 3.25])  # 1.0625: halfway, to the even code
        self.assertEqual(y[32:34].tolist(), [896.0, 10.0])    # scale 4: 224.125 -> 224
        # fp32(a * fp32(1/448)) rounds 448 (1 + 1e-8) down to exactly 1: scale 1, not 2
        y = q8(padded([448 * (1 + 1e-8), 1.25 * 2 ** -9], 32))
        self.assertEqual(y[:2].tolist(), [448.0, 2 ** -9])
        tiny = torch.full((32,), 1e-6, dtype=torch.float64)  # a floored to 1e-4: scale 2^-22
        self.assertEqual(q8(tiny)[0].item(), 4 * 2.0 ** -22)
        self.assertEqual(q8(torch.zeros(64, dtype=torch.float64)).abs().sum().item(), 0)
        self.assertEqual(q8(padded([-300.0, -1.0], 32))[:2].tolist(), [-288.0, -1.0])

    def test_e2m1_ties_to_the_even_code(self):
        ties = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 4.4]
        expected = [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 4.0]
        self.assertEqual(q4e8(padded(ties, 32))[:10].tolist(), expected)
        self.assertEqual(q4e4(padded(ties, 16))[:10].tolist(), expected)
        self.assertEqual(q4e8(padded(ties, 32) * 2 ** -10)[:10].tolist(), [e * 2 ** -10 for e in expected])
        self.assertEqual(q4e8(padded([7.0, 1.0], 32))[:2].tolist(), [8.0, 1.0])  # scale 2: 3.5 -> 4
        self.assertEqual(q4e8(torch.zeros(32, dtype=torch.float64)).abs().sum().item(), 0)
        self.assertEqual(q4e8(padded([1e-40], 32))[0].item(), 0.0)  # a floored to 6 2^-126

    def test_q4e4_scales_are_e4m3(self):
        y = q4e4(padded([5.0, 1.0], 16))  # a/6 = 0.8333 -> e4m3 0.8125; 5/0.8125 clips to 6
        self.assertEqual(y[:2].tolist(), [6 * 0.8125, 0.8125])
        v41.near_tie_kinds.clear()
        y = q4e4(padded([5.0625], 16))  # a/6 = 0.84375: halfway between 0.8125 and 0.875 -> 0.875 (even)
        self.assertEqual(y[0].item(), 6 * 0.875)
        self.assertEqual(v41.near_tie_kinds["q4e4_scale"], 1)
        self.assertEqual(q4e4(padded([1e-5, 0.0], 16)).abs().sum().item(), 0)  # scale 2^-9

    def test_near_ties_are_counted(self):
        v41.near_ties = 0
        q8(padded([448.0, 1.0625], 32))  # 1.0625 is an e4m3 midpoint
        self.assertEqual(v41.near_ties, 1)
        q8(padded([448.0, 1.07], 32))
        self.assertEqual(v41.near_ties, 1)
        q8(padded([448 * (1 + 3e-7)], 32))  # the fp32 product lies just above 1
        self.assertEqual(v41.near_ties, 2)
        self.assertEqual(v41.top_k([3.0, 1.0, 3.0 - 1e-7, -math.inf], 1), [0])
        self.assertEqual(v41.near_ties, 3)
        self.assertEqual(v41.top_k([0.0, 2.0, 0.0, 0.0], 2), [0, 1])  # exact tie: the lower index, not counted
        self.assertEqual(v41.top_k([1.0, -math.inf, 0.5], 3), [0, 2])  # -inf is never selected
        self.assertEqual(v41.near_ties, 3)

    def test_near_ties_record_their_position(self):
        v41._reset_near_ties()
        rows = torch.stack([padded([448.0, 1.07], 32), padded([448.0, 1.0625], 32)])
        q8(rows, torch.tensor([5, 7]))  # the tie is in the row of position 7
        self.assertEqual(dict(v41.near_tie_positions), {7: 1})
        v41.top_k([3.0, 1.0, 3.0 - 1e-7], 1, 4)
        v41.candidate_entries([3.0, 1.0, 3.0 - 1e-7, 0.0], 4, 1, 2, 9)  # block 3 pinned, blocks 0 / 2 cut
        q8(padded([448.0, 1.0625], 32))  # without positions: 0, the conservative answer
        self.assertEqual(dict(v41.near_tie_positions), {0: 1, 4: 1, 7: 1, 9: 1})
        self.assertEqual(v41.first_tie_position(), 0)
        self.assertEqual(sum(v41.near_tie_positions.values()), v41.near_ties)


class CheckpointCodecs(unittest.TestCase):
    def test_official_layout_known_bytes(self):
        with tempfile.TemporaryDirectory() as d:
            root = config("v41-mtp-r1")
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(root, f)
            fp8 = np.full((2, 40), 0x38, np.uint8)  # e4m3 1.0
            fp8[0, :3] = [0x7E, 0x01, 0xB8]            # 448, 2^-9, -1
            fp4 = np.zeros((1, 32), np.uint8)
            fp4[0, 0] = 0x2F  # element 0: code 0xF = -6; element 1: code 0x2 = 1
            table = np.full((2, 64), 0x38, np.uint8)
            safetensors_np.write_safetensors(os.path.join(d, "model.safetensors"), {
                "a.weight": ("F8_E4M3", fp8), "a.scale": ("F8_E8M0", np.array([[127, 130]], np.uint8)),
                "e.weight": ("I8", fp4.view(np.int8)), "e.scale": ("F8_E8M0", np.array([[126, 128]], np.uint8)),
                "b.weight": ("BF16", safetensors_np.encode_bf16(np.array([1.5, -2.0], np.float32))),
                "layers.0.engram.embed.weight": ("F8_E4M3", table),
                "layers.0.engram.embed.scale": ("F8_E8M0", np.array([[127, 0], [129, 128]], np.uint8))})
            weights = v41.CheckpointWeights(d, v41.TextConfig(root))
            a = weights("a.weight").numpy()
            self.assertEqual(a[0, :3].tolist(), [448.0, 2 ** -9, -1.0])
            self.assertTrue((a[1, :32] == 1).all() and (a[:, 32:] == 8).all())
            e = weights("e.weight").numpy()
            self.assertEqual(e.shape, (1, 64))
            self.assertEqual(e[0, :3].tolist(), [-3.0, 0.5, 0.0])
            self.assertEqual(weights("b.weight").tolist(), [1.5, -2.0])
            t = weights("layers.0.engram.embed.weight").numpy()  # one scale per row and 32 columns
            self.assertEqual([t[0, 0], t[0, 40], t[1, 0], t[1, 40]], [1.0, 2.0 ** -127, 4.0, 2.0])

    def test_writer_packs_fp4_low_nibble_first(self):
        values = np.zeros((1, 64))
        values[0, :4] = [-6.0, 1.0, 0.5, 3.0]
        packed, scale = v41.quantize_fp4(values)
        self.assertEqual(packed.view(np.uint8)[0, :2].tolist(), [0x2F, 0x51])
        self.assertEqual(scale.tolist(), [[127, 127]])
        codes, scale = v41.quantize_fp8(np.array([[896.0, 1.0]]))
        self.assertEqual((codes.tolist(), scale.tolist()), ([[0x7E, 0x30]], [[128]]))  # 448 x2, 0.5 x2


class Engram(unittest.TestCase):
    def test_released_multipliers_and_primes(self):
        self.assertEqual(v41.engram_multipliers(1, 99092, 4),
                         [76632096046245, 4839876093313, 35959672319349, 73987337458391])
        self.assertEqual(v41.engram_multipliers(14, 99092, 4),
                         [67716810739261, 51510806800915, 30921347202721, 82619226485591])
        released = {"engram_layer_ids": [1, 14], "engram_max_ngram_size": 4, "engram_n_heads": 8,
                    "engram_vocab_size": 16000000}
        primes = v41.engram_primes({"text_config": released})
        self.assertEqual([sum(p) for p in primes], [384006168, 384016682])
        self.assertEqual(primes[0][0], 16000057)  # the smallest prime above 15999999
        self.assertTrue(all(a < b for a, b in zip(primes[0] + primes[1], (primes[0] + primes[1])[1:])))

    def test_pure_python_generator_equals_numpy(self):
        for seed, bound in ((0, 10 ** 15), (10007 * 3, 2 ** 62 + 5), (5, 2 ** 29), (7, 3), (9, 2 ** 32)):
            expected = np.random.default_rng(seed).integers(0, bound, 7).tolist()
            self.assertEqual(v41.PCG64(seed).integers(bound, 7), expected)
        self.assertEqual(v41.engram_multipliers(2, 2 ** 62, 3), [1, 1, 1])  # B = 1

    def test_normalization(self):
        n = v41.normalize_text
        self.assertEqual(n("Ｈｅｌｌｏ"), "hello")                    # NFKC
        self.assertEqual(n("Cafe\u0301"), "cafe")                     # combining mark dropped
        self.assertEqual(n("é"), "e")
        self.assertEqual(n("İ"), "i")
        self.assertEqual(n("ﬁ"), "fi")
        self.assertEqual(n("ΣΑΣ"), "σασ")                            # per character: no final sigma
        self.assertEqual(n("  Hello \t\n World  "), "hello world")
        self.assertEqual(n(" "), " ")
        self.assertEqual(n("\n\t\r"), " ")
        self.assertEqual(n("\u00a0"), " ")                            # NFKC to a space, which stays
        self.assertEqual(n("\u2003x\u3000"), "x")
        self.assertEqual(n("x\x1c"), "x\x1c")                         # not Unicode White_Space
        self.assertEqual(n("\x0b"), "")
        self.assertEqual(v41.token_key("\x0b", "ċ"), "\x0b")          # N empty: the text itself
        self.assertEqual(v41.token_key("a\ufffd", "aÃ"), "aÃ")       # U+FFFD: the raw string
        self.assertEqual(v41.token_key(" The", "ĠThe"), "the")
        self.assertEqual(v41.byte_level_decode("ĠThe"), " The")
        self.assertEqual(v41.byte_level_decode("Ã"), "\ufffd")

    def test_token_map(self):
        classes, n = v41.token_classes(tokenizer_path())
        strings = v41.vocabulary_strings(tokenizer_path())
        by_text = {decoded: i for i, (_, decoded) in enumerate(strings)}
        self.assertEqual(classes[:4], [0, 1, 2, 3])  # first-seen numbering
        same = lambda *texts: len({classes[by_text[t]] for t in texts}) == 1
        self.assertTrue(same(" the", " The", "THE", "the"))
        self.assertTrue(same("e", "E", "é", "É", "e\u0301"))
        self.assertTrue(same(" ", "\n", "  ", "\n\n", " \t", "\u3000"))
        self.assertTrue(same("x", "\u00a0x"))
        self.assertFalse(same("x", "x\x1c"))
        lone = [i for i, (raw, decoded) in enumerate(strings) if decoded == "\ufffd"]
        self.assertGreater(len(lone), 100)  # every lone high byte is its own class
        self.assertEqual(len({classes[i] for i in lone}), len(lone))
        self.assertEqual(n, max(classes) + 1)

    def test_rows(self):
        root = config("v41-roles-engram")
        t = root["text_config"]
        tokens = prompt("v41-roles-engram", 1, 6)
        rows = v41.engram_rows(root, tokenizer_path(), tokens)
        self.assertEqual(rows.shape, (6, 2, (t["engram_max_ngram_size"] - 1) * t["engram_n_heads"]))
        classes, n = v41.token_classes(tokenizer_path())
        pad = classes[t["engram_pad_token_id"]]
        primes = v41.engram_primes(root)
        m = v41.engram_multipliers(t["engram_layer_ids"][1], n, 3)
        c0 = classes[tokens[0]]
        R1 = (c0 * m[0]) ^ (pad * m[1])
        R2 = R1 ^ (pad * m[2])
        offsets = np.concatenate([[0], np.cumsum(primes[1])[:-1]])
        self.assertEqual(rows[0, 1].tolist(), [R1 % primes[1][0], R1 % primes[1][1] + offsets[1],
                                               R2 % primes[1][2] + offsets[2], R2 % primes[1][3] + offsets[3]])
        self.assertTrue((rows < np.array(t["engram_num_embeddings"])[None, :, None]).all())


class Configs(unittest.TestCase):
    def test_roles_are_covered(self):
        roles = set()
        for name in CONFIGS:
            t = v41.TextConfig(config(name))
            for l in range(t.L):
                r = t.ratios[l]
                if r == 0:
                    roles.add("window")
                elif l in t.kv_sources:
                    roles.add(f"full r={r}" + (" candidate" if l == t.candidate else ""))
                elif l in t.index_sources:
                    roles.add("reindex " + ("after" if l > t.candidate else "before"))
                else:
                    roles.add(f"reuse r={r}")
                if l in t.engram_layers:
                    roles.add("engram" + (" full" if l in t.kv_sources else "") + (" early" if l < 2 else ""))
            roles.add(f"hc {t.hc}")
            roles.add("groups 1" if t.G == 1 else "groups >1")
            roles.add(f"mtp {t.n_mtp}")
        for role in ("window", "full r=2", "full r=1 candidate", "reindex before", "reindex after",
                     "reuse r=2", "reuse r=1", "engram full early", "engram early", "hc 2", "hc 4", "groups 1",
                     "groups >1", "mtp 0", "mtp 1"):
            self.assertIn(role, roles)

    def test_validation_names_the_key(self):
        def fails(edit, key):
            root = copy.deepcopy(config("v41-roles-engram"))
            edit(root["text_config"])
            with self.assertRaisesRegex(ValueError, key):
                v41.TextConfig(root)
        fails(lambda c: c.update(kv_source_layer_ids=[0, 1, 4]), "kv_source_layer_ids: entry 0 has compress ratio 0")
        fails(lambda c: c.update(engram_num_embeddings=[4062, 4153]), "engram_num_embeddings")
        fails(lambda c: c.update(index_source_layer_ids=[3, 4, 5]), "kv_source_layer_ids: entry 1 is not in")
        fails(lambda c: c.update(compress_ratios=[0, 2, 1, 2, 1, 1, 1, 0]), "compress_ratios: layer 2")
        fails(lambda c: c.update(candidate_source_layer_id=6), "candidate_source_layer_id")
        fails(lambda c: c.pop("hc_mult"), "hc_mult")
        with self.assertRaisesRegex(ValueError, "text_config"):
            v41.TextConfig({"architectures": ["DeepseekV41ForCausalLM"]})

    def test_released_tensor_count(self):
        released = {
            "vocab_size": 129280, "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 64,
            "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1280, "o_lora_rank": 1024, "o_groups": 8,
            "rms_norm_eps": 1e-20, "rope_theta": 10000, "compress_rope_theta": 160000, "sliding_window": 128,
            "compress_ratios": [0, 0] + [2] * 18 + [1] * 20 + [0, 0, 0], "kv_source_layer_ids": [2, 8, 14, 20],
            "index_source_layer_ids": [2, 8, 14, 20, 24, 28, 32, 36], "index_n_heads": 32, "index_head_dim": 128,
            "index_topk": 512, "candidate_source_layer_id": 20, "candidate_topk_blocks": 2048,
            "candidate_block_size": 8, "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 6,
            "moe_intermediate_size": 2304, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
            "engram_layer_ids": [1, 14], "engram_num_embeddings": [384006168, 384016682],
            "engram_max_ngram_size": 4, "engram_vocab_size": 16000000, "engram_n_heads": 8,
            "engram_head_dim": 256, "engram_pad_token_id": 2, "num_nextn_predict_layers": 3,
            "dspark_target_layer_ids": [37, 38, 39], "dspark_markov_rank": 256, "dspark_n_routed_experts": 128}
        specs = v41.tensor_specs({"text_config": released}, include_mtp=True)
        self.assertEqual(len(specs), 96085 - 266)  # spec 1.5, less the vision tensors
        shapes = {name: shape for name, shape, _ in specs}
        self.assertEqual(shapes["layers.1.engram.wkv.weight"], [25600, 6144])
        self.assertEqual(shapes["layers.1.engram.embed.scale"], [384006168, 8])
        self.assertEqual(shapes["layers.3.ffn.experts.0.w2.scale"], [5120, 72])
        self.assertEqual(shapes["layers.2.attn.wo_a.weight"], [8192, 4096])
        self.assertEqual(shapes["mtp.0.main_proj.weight"], [5120, 15360])
        self.assertEqual(len(specs), len(set(shapes)))


class PrefillAndDecoding(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dirs = {}
        for name in CONFIGS:
            root = config(name)
            d = os.path.join(_TEMP.name, name)
            weights = v41.random_weights(root, 1, include_mtp=True)
            extra = {"vision.patch_embed.proj.weight": ("BF16", np.zeros((4, 8), np.uint16)),
                     "image_newline": ("F32", np.zeros(8, np.float32))}
            v41.write_checkpoint(d, root, weights, tokenizer=TOKENIZER, extra=extra,
                                 shards=2 if name == CONFIGS[1] else 1)
            cls.dirs[name] = (d, weights)

    def test_whole_prompt_equals_token_by_token(self):
        for name in CONFIGS:
            with self.subTest(config=name):
                ref = v41.Reference.from_dir(self.dirs[name][0])
                tokens = prompt(name, 3)
                full = ref.forward(tokens)
                decoder = v41.Decoder(ref)
                steps = torch.stack([decoder.step(x) for x in tokens])
                error = float((full - steps).abs().max() / full.abs().max())
                print(f"{name}: prefill vs decode {error:.1e}")
                self.assertLess(error, 1e-12)
                self.assertTrue(0.3 < float(full.std()) < 10)  # activations of order one

    def test_published_index_keys_differ_once_a_ratio_2_layer_has_more_than_topk(self):
        for name in ("v41-roles-engram", "v41-hc2-groups1"):
            with self.subTest(config=name):
                ref = v41.Reference.from_dir(self.dirs[name][0])
                tokens = prompt(name, 4)
                full = ref.forward(tokens)
                decoder = v41.Decoder(ref, published_index_keys=True)
                steps = torch.stack([decoder.step(x) for x in tokens])
                error = ((full - steps).abs().amax(-1) / full.abs().max()).tolist()
                first = min(p for p in range(len(tokens)) if (p + 1) // 2 > ref.t.index_topk)
                self.assertLess(max(error[:first]), 1e-12)
                self.assertGreater(max(error[first:]), 1e-3)

    def test_compressed_entry_ties_are_at_the_first_query_that_sees_them(self):
        ref = v41.Reference.from_dir(self.dirs["v41-roles-engram"][0])
        l = 1  # kv source, ratio 2, index source
        c = torch.zeros(2, ref.t.hd, dtype=torch.float64)
        c[1, :2] = f64([6.0, 0.75])  # not rotated (the rope dims are the last ones); 0.75: an e2m1 midpoint
        v41._reset_near_ties()
        ref.finish_groups(l, c, torch.tensor([0, 2]))  # groups 0 and 1: tokens 0-1 and 2-3
        self.assertEqual(v41.near_tie_kinds["q4e4"], 1)
        self.assertEqual(set(v41.near_tie_positions), {3})

    def test_first_tie_position(self):
        """The logits before the first tie position depend on no near tie: a prompt of only those
        tokens has no near tie and the same logits; every prefix has exactly the full prompt's ties
        at positions below its length; a prompt without near ties reports None."""
        for name in CONFIGS:
            with self.subTest(config=name):
                d = self.dirs[name][0]
                for seed in range(16):
                    tokens = prompt(name, seed)
                    full, first = v41.logits_and_first_tie(d, tokens)
                    self.assertEqual(first is None, v41.near_ties == 0)
                    if first:
                        break
                else:
                    self.fail("no prompt with a near tie after position 0")
                self.assertTrue(0 < first < len(tokens))
                self.assertEqual(sum(v41.near_tie_positions.values()), v41.near_ties)
                positions = collections.Counter(v41.near_tie_positions)
                for n in sorted({first, first + 1, (first + len(tokens)) // 2}):
                    prefix, prefix_first = v41.logits_and_first_tie(d, tokens[:n])
                    np.testing.assert_array_equal(prefix, full[:n])
                    self.assertEqual(v41.near_tie_positions, collections.Counter(
                        {p: c for p, c in positions.items() if p < n}))
                    if n == first:
                        self.assertIsNone(prefix_first)
                for seed in range(16):
                    tokens = prompt(name, seed, 16)
                    _, first = v41.logits_and_first_tie(d, tokens)
                    self.assertEqual(first is None, v41.near_ties == 0)
                    if first is None:
                        break
                else:
                    self.fail("every prompt had a near tie")

    def test_plain_layout_and_module_api(self):
        name = "v41-roles-engram"
        d, weights = self.dirs[name]
        tokens = prompt(name, 5, 24)
        expected, ties = v41.logits_and_near_ties(d, tokens)
        self.assertEqual(expected.dtype, np.float32)
        self.assertEqual(expected.shape, (24, 512))
        self.assertEqual(ties, v41.near_ties)
        plain = os.path.join(_TEMP.name, "plain")
        v41.write_checkpoint(plain, config(name), weights, layout="plain", tokenizer=TOKENIZER)
        with open(os.path.join(plain, "model.safetensors"), "rb") as f:
            self.assertNotIn(b"F8_E4M3", f.read(1 << 16))
        np.testing.assert_array_equal(v41.logits(plain, tokens), expected)
        recorded, _ = v41.taps(d, tokens)
        t = v41.TextConfig(config(name))
        for l in range(t.L):
            for tap, width in (("attn_in", t.D), ("attn_out", t.D), ("ffn_in", t.D), ("ffn_out", t.D),
                               ("streams", t.hc * t.D)):
                self.assertEqual(recorded[(tap, l)].shape, (24, width))
        self.assertEqual(sorted(l for tap, l in recorded if tap == "engram_out"), t.engram_layers)
        head = weights["head.weight"]
        np.testing.assert_allclose(recorded[("final_norm", -1)] @ head.T, expected, rtol=1e-5, atol=1e-5)
        output = os.path.join(_TEMP.name, "logits.npy")
        subprocess.run([sys.executable, os.path.join(harness.REFERENCE_DIR, "deepseek_v41.py"), "--model", d,
                        "--tokens", ",".join(map(str, tokens[:5])), "--output", output], check=True)
        np.testing.assert_array_equal(np.load(output), expected[:5])


class FeaturesMatter(unittest.TestCase):
    """Each feature the tiny configs cover changes the logits: none is vacuous."""

    def assert_changes(self, name, edit_config=None, edit_weights=None):
        root = config(name)
        weights = v41.random_weights(root, 4)
        tokens = prompt(name, 5)
        base = reference(root, weights).forward(tokens)
        changed_root, changed_weights = copy.deepcopy(root), dict(weights)
        if edit_config:
            edit_config(changed_root["text_config"])
        if edit_weights:
            edit_weights(changed_weights)
        difference = float((reference(changed_root, changed_weights).forward(tokens) - base).abs().max())
        self.assertGreater(difference, 1e-3 * float(base.abs().max()))

    def test_engram_gate(self):
        for name, layer in (("v41-roles-engram", 0), ("v41-hc2-groups1", 4)):
            self.assert_changes(name, edit_weights=lambda w: w.update(
                {f"layers.{layer}.engram.q_weight": -w[f"layers.{layer}.engram.q_weight"]}))

    def test_attention_sink(self):
        self.assert_changes("v41-mtp-r1", edit_weights=lambda w: w.update(
            {"layers.2.attn.attn_sink": w["layers.2.attn.attn_sink"] - 30}))

    def test_swiglu_clamp(self):
        for name in CONFIGS:
            self.assert_changes(name, edit_config=lambda c: c.update(swiglu_limit=0))

    def test_candidate_mask(self):
        for name in CONFIGS:
            self.assert_changes(name, edit_config=lambda c: c.update(candidate_topk_blocks=1000))

    def test_index_topk(self):
        self.assert_changes("v41-hc2-groups1", edit_config=lambda c: c.update(index_topk=1000))

    def test_yarn_on_compressed_layers(self):
        self.assert_changes("v41-roles-engram", edit_config=lambda c: c.pop("rope_scaling"))


if __name__ == "__main__":
    unittest.main()
