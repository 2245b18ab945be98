"""The OpenAI API of `megamoe serve`: completions and chat, plain and streamed, with the usual
fields; answers equal the generate command's; every bad request gets a 4xx OpenAI error and the
server goes on serving; /health and /metrics.

    cd tests/serve && MEGAMOE_BIN=/path/to/megamoe /usr/bin/python3 -m unittest -v test_serve_api
"""
import json
import socket
import subprocess
import tempfile
import unittest

import serve_harness as h
from serve_harness import MODEL_NAME

CONTEXT = 256
MAX_BODY = 65536
MAX_BATCH = 4


class ServeApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-serve-api-")
        cls.model = h.make_model(cls.tmp.name)
        cls.server = h.Server(cls.model, "--max-context", CONTEXT, "--max-body-bytes", MAX_BODY,
                              "--max-batch", MAX_BATCH)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def generate(self, *args):
        """What `megamoe generate` prints for the same model (greedy, no EOS stop)."""
        return h.run_megamoe("generate", "--model", self.model, "--ignore-eos", *args)

    def test_models_and_health(self):
        status, _, body = self.server.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        models = json.loads(body)
        self.assertEqual(models["object"], "list")
        self.assertEqual([m["id"] for m in models["data"]], [MODEL_NAME])
        status, _, body = self.server.request("GET", "/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))

    def test_completion_equals_generate(self):
        prompt = "the quick brown fox"
        answer = self.server.complete(prompt=prompt, max_tokens=8, temperature=0, ignore_eos=True)
        self.assertEqual(answer["object"], "text_completion")
        self.assertTrue(answer["id"].startswith("cmpl-"))
        self.assertEqual(answer["model"], MODEL_NAME)
        [choice] = answer["choices"]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(choice["text"] + "\n", self.generate("--prompt", prompt, "--max-tokens", 8))
        ids = subprocess.run([h.megamoe_binary(), "tokenize", "--tokenizer", self.model], input=prompt,
                             capture_output=True, text=True, check=True).stdout.split()
        usage = answer["usage"]
        self.assertEqual(usage["prompt_tokens"], len(ids) + 1)  # BOS first
        self.assertEqual(usage["completion_tokens"], 8)
        self.assertEqual(usage["total_tokens"], len(ids) + 9)

    def test_prompt_as_token_ids(self):
        answer = self.server.complete(prompt=[5, 6, 7, 8], max_tokens=6, ignore_eos=True, return_token_ids=True)
        expected = self.generate("--prompt-ids", "5,6,7,8", "--max-tokens", 6, "--print-ids").split()
        self.assertEqual(answer["choices"][0]["token_ids"], [int(t) for t in expected])
        self.assertEqual(answer["usage"]["prompt_tokens"], 4)
        # A list holding one prompt is the same request.
        again = self.server.complete(prompt=[[5, 6, 7, 8]], max_tokens=6, ignore_eos=True, return_token_ids=True)
        self.assertEqual(again["choices"][0]["token_ids"], answer["choices"][0]["token_ids"])

    def test_stream_equals_plain(self):
        fields = dict(prompt="many people read", max_tokens=12, ignore_eos=True)
        plain = self.server.complete(**fields)["choices"][0]
        events = self.server.stream("/v1/completions", {**fields, "stream_options": {"include_usage": True}})
        *chunks, usage = events
        self.assertGreater(len(chunks), 1)
        for chunk in chunks:
            self.assertEqual(chunk["object"], "text_completion")
            self.assertEqual(len(chunk["choices"]), 1)
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks), plain["text"])
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks], [None] * (len(chunks) - 1) + ["length"])
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 12)
        # Without include_usage there is no usage chunk.
        self.assertTrue(all(e["choices"] for e in self.server.stream("/v1/completions", fields)))

    def test_chat(self):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the lazy dog"}]
        status, answer = self.server.post("/v1/chat/completions", {"model": MODEL_NAME, "messages": messages,
                                                                    "max_tokens": 10, "ignore_eos": True})
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["object"], "chat.completion")
        self.assertTrue(answer["id"].startswith("chatcmpl-"))
        [choice] = answer["choices"]
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertIsInstance(choice["message"]["content"], str)
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(answer["usage"]["completion_tokens"], 10)
        # The prompt is the chat format's, as `megamoe tokenizer chat` renders it.
        rendered = subprocess.run([h.megamoe_binary(), "tokenizer", "chat", "--tokenizer", self.model,
                                   "--add-generation-prompt", "--ids"], input=json.dumps(messages),
                                  capture_output=True, text=True, check=True).stdout.split()
        self.assertEqual(answer["usage"]["prompt_tokens"], len(rendered))
        # DeepSeek-V4's switches mean nothing to a V3-style model: the same prompt and answer.
        status, again = self.server.post("/v1/chat/completions", {
            "model": MODEL_NAME, "messages": messages, "max_tokens": 10, "ignore_eos": True, "tools": "x",
            "chat_template_kwargs": {"thinking": True}, "thinking": "on", "reasoning_effort": "max"})
        self.assertEqual(status, 200, again)
        self.assertEqual((again["choices"], again["usage"]), (answer["choices"], answer["usage"]))
        self.assertEqual(set(choice["message"]), {"role", "content"})

        events = self.server.stream("/v1/chat/completions", {"messages": messages, "max_tokens": 10,
                                                             "ignore_eos": True})
        self.assertEqual(events[0]["object"], "chat.completion.chunk")
        self.assertEqual(events[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertTrue(all("role" not in e["choices"][0]["delta"] for e in events[1:]))
        self.assertEqual("".join(e["choices"][0]["delta"].get("content", "") for e in events),
                         choice["message"]["content"])
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "length")

    def test_n_choices_and_seeds(self):
        fields = dict(prompt=[1, 2, 3], n=3, max_tokens=10, temperature=1.0, seed=5, ignore_eos=True,
                      return_token_ids=True)
        answer = self.server.complete(**fields)
        self.assertEqual([c["index"] for c in answer["choices"]], [0, 1, 2])
        self.assertEqual(answer["usage"]["completion_tokens"], 30)
        self.assertEqual(answer["usage"]["prompt_tokens"], 3)
        ids = [c["token_ids"] for c in answer["choices"]]
        self.assertEqual(len({tuple(i) for i in ids}), 3, "the choices of one request differ")
        self.assertEqual([c["token_ids"] for c in self.server.complete(**fields)["choices"]], ids, "a seed repeats")
        other = self.server.complete(**{**fields, "seed": 6})
        self.assertNotEqual([c["token_ids"] for c in other["choices"]], ids)
        # Streamed choices arrive interleaved, each with its index.
        events = self.server.stream("/v1/completions", {**fields, "n": 2})
        streamed = {0: [], 1: []}
        for event in events:
            streamed[event["choices"][0]["index"]] += event["choices"][0]["token_ids"]
        self.assertEqual(streamed, {0: ids[0], 1: ids[1]})

    def test_stop_strings(self):
        text = self.server.complete(prompt="the quick", max_tokens=24, ignore_eos=True)["choices"][0]["text"]
        stop = text[len(text) // 2: len(text) // 2 + 3]
        self.assertTrue(stop.strip(), f"no stop string in {text!r}")
        for field in (stop, [stop, "never there"]):
            with self.subTest(stop=field):
                choice = self.server.complete(prompt="the quick", max_tokens=24, ignore_eos=True,
                                              stop=field)["choices"][0]
                self.assertEqual(choice["finish_reason"], "stop")
                self.assertEqual(choice["text"], text[:text.index(stop)])

    def assert_error(self, status, answer, expected_status, fragment, param=None):
        self.assertEqual(status, expected_status, answer)
        error = answer["error"]
        self.assertIn(fragment, error["message"])
        self.assertIsInstance(error["type"], str)
        if param:
            self.assertEqual(error["param"], param)

    def test_bad_requests(self):
        long_prompt = list(range(1, CONTEXT + 10))
        chat = "/v1/chat/completions"
        ok = {"model": MODEL_NAME, "prompt": "a", "max_tokens": 2}
        cases = [
            ("/v1/completions", "{\"model\": ", 400, "not valid JSON", None),
            ("/v1/completions", "[1, 2]", 400, "JSON object", None),
            ("/v1/completions", b"{\"model\": \"tiny\", \"prompt\": \"\xff\xfe\"}", 400, "not valid JSON", None),
            ("/v1/completions", {"prompt": "a"}, 400, "required", "model"),
            ("/v1/completions", {**ok, "model": 7}, 400, "string", "model"),
            ("/v1/completions", {**ok, "model": "gpt-4"}, 404, "does not exist", "model"),
            ("/v1/completions", {"model": MODEL_NAME}, 400, "required", "prompt"),
            ("/v1/completions", {**ok, "prompt": 12}, 400, "token ids", "prompt"),
            ("/v1/completions", {**ok, "prompt": []}, 400, "token ids", "prompt"),
            ("/v1/completions", {**ok, "prompt": [1, "x"]}, 400, "token ids", "prompt"),
            ("/v1/completions", {**ok, "prompt": ["a", "b"]}, 400, "one prompt", "prompt"),
            ("/v1/completions", {**ok, "prompt": [1, 10 ** 6]}, 400, "vocabulary", None),
            ("/v1/completions", {**ok, "prompt": [-1]}, 400, "vocabulary", None),
            ("/v1/completions", {**ok, "prompt": long_prompt}, 400, "context", "prompt"),
            ("/v1/completions", {**ok, "max_tokens": "ten"}, 400, "integer", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": 2.5}, 400, "integer", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": 0}, 400, "at least 1", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": -5}, 400, "at least 1", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": 10 ** 9}, 400, "context", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": 10 ** 30}, 400, "integer", "max_tokens"),
            ("/v1/completions", {**ok, "max_tokens": 2 ** 64 - 1}, 400, "too large", "max_tokens"),
            ("/v1/completions", {**ok, "temperature": "hot"}, 400, "number", "temperature"),
            ("/v1/completions", {**ok, "temperature": -1}, 400, "temperature", None),
            ("/v1/completions", {**ok, "top_p": 0}, 400, "top_p", None),
            ("/v1/completions", {**ok, "seed": "x"}, 400, "integer", "seed"),
            ("/v1/completions", {**ok, "stop": 5}, 400, "strings", "stop"),
            ("/v1/completions", {**ok, "stop": ["a", 1]}, 400, "strings", "stop"),
            ("/v1/completions", {**ok, "stop": ""}, 400, "stop", None),
            ("/v1/completions", {**ok, "n": 0}, 400, "between 1 and", "n"),
            ("/v1/completions", {**ok, "n": MAX_BATCH + 1}, 400, "between 1 and", "n"),
            ("/v1/completions", {**ok, "stream": "yes"}, 400, "true or false", "stream"),
            ("/v1/completions", {**ok, "stream_options": 3}, 400, "object", "stream_options"),
            (chat, {"model": MODEL_NAME}, 400, "required", "messages"),
            (chat, {"model": MODEL_NAME, "messages": "hi"}, 400, "messages", "messages"),
            (chat, {"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role", "messages"),
            (chat, {"model": MODEL_NAME, "messages": [{"role": "user"}]}, 400, "content", "messages"),
            (chat, {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400,
             "at least 1", "max_tokens"),
        ]
        for path, body, status, fragment, param in cases:
            with self.subTest(path=path, body=body if not isinstance(body, dict) or len(str(body)) < 200 else "long"):
                code, _, data = self.server.request("POST", path, body)
                self.assert_error(code, json.loads(data), status, fragment, param)
        self.assertEqual(self.server.complete(**{k: v for k, v in ok.items() if k != "model"})["object"],
                         "text_completion")

    def test_library_level_errors_are_json(self):
        status, _, data = self.server.request("POST", "/v1/completions", b"x" * (MAX_BODY + 1))
        self.assert_error(status, json.loads(data), 413, "limit")
        status, _, data = self.server.request("GET", "/v1/engines")
        self.assert_error(status, json.loads(data), 404, "no route")
        status, _, data = self.server.request("GET", "/v1/completions")
        self.assert_error(status, json.loads(data), 404, "no route")
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=h.TIMEOUT) as raw:
            raw.sendall(b"NONSENSE\r\n\r\n")
            self.assertTrue(raw.recv(4096).startswith(b"HTTP/1.1 400"))
        # A body cut short by a client that goes away: nothing to answer, and nothing breaks.
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=h.TIMEOUT) as raw:
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\"")
        self.assertEqual(self.server.complete(prompt="a", max_tokens=2)["object"], "text_completion")

    def test_metrics(self):
        self.server.complete(prompt="the lazy dog", max_tokens=3)
        self.server.request("POST", "/v1/completions", "{")
        text = self.server.metrics()
        self.assertIn('megamoe_requests_total{endpoint="/v1/completions",status="200"}', text)
        self.assertIn('megamoe_requests_total{endpoint="/v1/completions",status="400"}', text)
        for name in ("megamoe_prompt_tokens_total", "megamoe_completion_tokens_total", "megamoe_steps_total",
                     "megamoe_batch_size_count", "megamoe_time_to_first_token_seconds_count"):
            self.assertGreater(h.metric(text, name), 0, name)
        self.assertGreaterEqual(h.metric(text, "megamoe_tokens_per_second"), 0)
        self.assertEqual(h.metric(text, "megamoe_queue_depth"), 0)
        for kind in ("counter", "gauge", "histogram"):
            self.assertIn(f" {kind}\n", text)
        # Per-layer expert load: layer 0 is dense (first_k_dense_replace = 1), layers 1 and 2 route
        # four of their 16 experts per token.
        load = {}
        for line in text.splitlines():
            if line.startswith("megamoe_expert_tokens_total{"):
                labels, value = line.split("} ")
                layer = int(labels.split('layer="')[1].split('"')[0])
                load[layer] = load.get(layer, 0) + float(value)
        self.assertEqual(sorted(load), [1, 2])
        self.assertEqual(load[1], load[2])
        self.assertEqual(load[1] % 4, 0)
        # MaxVio of each MoE layer's loads, (max - mean) / mean, next to them.
        counts, maxvio = {}, {}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in ("megamoe_expert_tokens_total", "megamoe_expert_maxvio"):
                labels, value = rest.split("} ")
                layer = int(labels.split('layer="')[1].split('"')[0])
                if name == "megamoe_expert_maxvio":
                    maxvio[layer] = float(value)
                else:
                    counts.setdefault(layer, []).append(float(value))
        self.assertEqual(sorted(maxvio), [1, 2])
        for layer, values in counts.items():
            mean = sum(values) / len(values)
            self.assertAlmostEqual(maxvio[layer], (max(values) - mean) / mean, places=9)


if __name__ == "__main__":
    unittest.main()
