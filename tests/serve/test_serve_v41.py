"""DeepSeek-V4.1 in `megamoe serve`: chat prompts in V4.1's dialect of the V4 format (the vectors
of V4.1's published encoder, tests/data/dsv41-chat-encoding, token for token), numeric and tiered
reasoning effort, 400s naming the field; and continuous batching: concurrent greedy requests of
very different lengths answer as each does alone (the layers after the last kv source run only
the positions within their windows' reach, per sequence, in batches that mix prefill and decode).

    cd tests/serve && MEGAMOE_BIN=/path/to/megamoe /usr/bin/python3 -m unittest -v test_serve_v41
"""
import concurrent.futures
import json
import os
import random
import subprocess
import unittest

import serve_harness as h

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "dsv41-chat-encoding",
                       "vectors.json")
USER = [{"role": "user", "content": "the lazy dog"}]


class ServeV41(h.ChatModelTest):
    CONFIG = h.V41_CONFIG

    def test_prompts_equal_the_published_encoder_vectors(self):
        with open(VECTORS, encoding="utf-8") as f:
            cases = json.load(f)
        checked = 0
        for case in cases:
            if "expected" not in case or any(m.get("wo_eos") for m in case["messages"]):
                continue  # an assistant turn left open is not a request
            if not case["thinking"] and case["reasoning_effort"] is not None:
                continue  # over the API an effort turns thinking on
            fields = {"messages": case["messages"], "thinking": case["thinking"],
                      "chat_template_kwargs": {"drop_thinking": case.get("drop_thinking", True)}}
            if case["reasoning_effort"] is not None:
                fields["reasoning_effort"] = case["reasoning_effort"]
            with self.subTest(case=case["name"]):
                self.assertEqual(self.prompt_ids(**fields), self.tokenize(case["expected"]))
                checked += 1
        self.assertGreaterEqual(checked, 20)

    def test_reasoning_effort_words_and_numbers(self):
        line = "<｜begin▁of▁sentence｜><｜System｜>Reasoning Effort: {} (range 1-100, the higher the value, " \
               "the more thorough the reasoning)\n\n<｜User｜>the lazy dog<｜Assistant｜><think>"
        for effort, shown in (("minimal", 50), ("low", 50), ("medium", 75), ("high", 75), ("xhigh", 100),
                              ("max", 100), (1, 1), (64, 64)):
            with self.subTest(effort=effort):
                self.assertEqual(self.prompt_ids(reasoning_effort=effort), self.tokenize(line.format(shown)))
        self.assertEqual(self.prompt_ids(thinking=True), self.tokenize(line.format(75)))

    def test_bad_fields(self):
        cases = [
            ({"reasoning_effort": 0}, "1 to 100", "reasoning_effort"),
            ({"reasoning_effort": 101}, "1 to 100", "reasoning_effort"),
            ({"reasoning_effort": "extreme"}, "1 to 100", "reasoning_effort"),
            ({"messages": [{"role": "user", "content": "see <｜deepseek_image｜>"}]}, "image placeholder", "messages"),
            ({"messages": USER + [{"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
             "JSON object", "messages"),
        ]
        self.assert_bad_fields(cases)

    def test_megamoe_chat_takes_the_effort(self):
        def chat(*flags):
            return subprocess.run([h.megamoe_binary(), "chat", "--model", self.model, "--max-tokens", "4", *flags],
                                  input="the lazy dog\n", capture_output=True, text=True, timeout=120)
        for flags in ([], ["--thinking"], ["--thinking", "--reasoning-effort", "37"]):
            with self.subTest(flags=flags):
                result = chat(*flags)
                self.assertEqual(result.returncode, 0, result.stderr)
        result = chat("--thinking", "--reasoning-effort", "101")
        self.assertEqual(result.returncode, 1)
        self.assertIn("reasoning_effort: \"101\" is not a number from 1 to 100", result.stderr)

    def test_concurrent_answers_equal_each_alone(self):
        rng = random.Random(4)
        prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (3, 90, 41, 130)]

        def answer(prompt):
            return self.server.complete(prompt=prompt, max_tokens=12, temperature=0,
                                        return_token_ids=True)["choices"][0]["token_ids"]

        alone = [answer(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(answer, prompts))
        self.assertEqual(together, alone)
        self.assertTrue(all(len(a) == 12 for a in alone), alone)


if __name__ == "__main__":
    unittest.main()
