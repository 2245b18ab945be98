"""What the serve tests share: a tiny model with a tokenizer (a synthetic DeepSeek-V3- or
V4-style checkpoint whose vocabulary is a tokenizer trained here), a `megamoe serve` on a free
loopback port, and small HTTP helpers with time limits on everything. Running megamoe and the
configs come from the model tests' harness (tests/model/harness.py)."""
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
from harness import CONFIG_DIR, load_json, megamoe_binary, run_megamoe, synth  # noqa: E402,F401

V3_CONFIG = os.path.join(CONFIG_DIR, "v3-noaux-yarn.json")
V4_CONFIG = os.path.join(CONFIG_DIR, "v4-window-hash.json")
V41_CONFIG = os.path.join(CONFIG_DIR, "v41-roles-engram.json")
MODEL_NAME = "tiny"
TIMEOUT = 30  # seconds any one request, start or stop may take


def corpus(seed=1, lines=400):
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial bankers and "
             "many people read books about models tokens servers batches").split()
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(lines)) + "\n"


def make_model(directory, with_tokenizer=True, config_path=V3_CONFIG, vocab_size=600, added_tokens=(),
               **config_keys):
    """A tiny FP8 checkpoint of `config_path` (V3-style unless told; `config_keys` replace its
    values) in `directory`: with a tokenizer of `vocab_size` tokens plus `added_tokens` (strings
    that encode as one token each), its vocabulary is exactly the tokenizer's (so every sampled id
    decodes); without, the config's."""
    os.makedirs(directory, exist_ok=True)
    config = load_json(config_path)
    settings = config.get("text_config", config)  # V4.1 keeps its settings under text_config
    settings.update(config_keys)
    if with_tokenizer:
        tokenizer_dir = os.path.join(directory, "tokenizer-training")
        corpus_path = os.path.join(directory, "corpus.txt")
        with open(corpus_path, "w") as f:
            f.write(corpus())
        run_megamoe("tokenizer", "train", "--vocab-size", vocab_size, "--input", corpus_path,
                    "--output", tokenizer_dir)
        tokenizer = load_json(os.path.join(tokenizer_dir, "tokenizer.json"))
        ids = list(tokenizer["model"]["vocab"].values()) + [t["id"] for t in tokenizer["added_tokens"]]
        for content in added_tokens:
            ids.append(max(ids) + 1)
            tokenizer["added_tokens"].append({"id": ids[-1], "content": content, "single_word": False,
                                              "lstrip": False, "rstrip": False, "normalized": False,
                                              "special": False})
        with open(os.path.join(tokenizer_dir, "tokenizer.json"), "w") as f:
            json.dump(tokenizer, f, ensure_ascii=False)
        settings["vocab_size"] = max(ids) + 1
    synth_config = os.path.join(directory, "config-for-synth.json")
    with open(synth_config, "w") as f:
        json.dump(config, f)
    model = os.path.join(directory, MODEL_NAME)
    synth(synth_config, "fp8", 1, model)
    if with_tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_dir, name), model)
    return model


class Server:
    """`megamoe serve --model MODEL --port 0 FLAGS...`, its port read from what it prints."""

    def __init__(self, model, *flags):
        self.process = subprocess.Popen([megamoe_binary(), "serve", "--model", model, "--port", "0", *map(str, flags)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        listening = threading.Event()

        def read_log():  # keeps the pipe drained; the first line says where it listens
            for line in self.process.stderr:
                self.log.append(line)
                if " on http://127.0.0.1:" in line:
                    self.port = int(line.rsplit(":", 1)[1].split()[0])
                    listening.set()

        self.reader = threading.Thread(target=read_log, daemon=True)
        self.reader.start()
        if not listening.wait(TIMEOUT):
            self.process.kill()
            raise AssertionError("megamoe serve did not start:\n" + "".join(self.log))

    def stop(self, sig=signal.SIGTERM):
        """Signals the server and returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.reader.join(TIMEOUT)
            self.process.stderr.close()

    def connection(self, timeout=TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body bytes)."""
        connection = self.connection()
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            connection.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def post(self, path, body):
        """(status, parsed JSON)."""
        status, _, data = self.request("POST", path, body)
        return status, json.loads(data)

    def complete(self, **fields):
        """The JSON of a successful /v1/completions request."""
        status, answer = self.post("/v1/completions", {"model": MODEL_NAME, **fields})
        if status != 200:
            raise AssertionError(f"HTTP {status}: {answer}")
        return answer

    def open_stream(self, path, body):
        """Starts a streaming request; returns the connection and its response (status 200)."""
        connection = self.connection()
        connection.request("POST", path, body=json.dumps({"model": MODEL_NAME, **body, "stream": True}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {response.read()!r}")
        return connection, response

    def stream(self, path, body):
        """The parsed events of a streamed request, up to and without the final "[DONE]" (which
        must come)."""
        connection, response = self.open_stream(path, body)
        try:
            return read_events(response)
        finally:
            connection.close()

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200, status
        return data.decode()


def read_events(response, limit=100000):
    """Reads server-sent events until "data: [DONE]"; returns the JSON of the others."""
    events = []
    for _ in range(limit):
        line = response.readline()
        if not line:
            raise AssertionError(f"the stream ended without [DONE] after {len(events)} events")
        line = line.decode().rstrip("\r\n")
        if not line:
            continue
        assert line.startswith("data: "), line
        if line == "data: [DONE]":
            return events
        events.append(json.loads(line[len("data: "):]))
    raise AssertionError("no [DONE] within the limit")


def metric(text, name):
    """The value of an unlabelled metric in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def wait_until(condition, timeout=TIMEOUT, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


class ChatModelTest(unittest.TestCase):
    """A served tiny model of CONFIG (set by each subclass) whose tokenizer has "<think>" and
    "</think>" as single tokens, with --max-context CONTEXT and --max-batch 4."""
    CONFIG = None
    CONTEXT = 4096

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-serve-chat-")
        cls.model = make_model(cls.tmp.name, config_path=cls.CONFIG, vocab_size=300,
                               added_tokens=("<think>", "</think>"), max_position_embeddings=cls.CONTEXT)
        cls.server = Server(cls.model, "--max-context", cls.CONTEXT, "--max-batch", 4)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    @classmethod
    def tokenize(cls, text):
        return [int(t) for t in subprocess.run([megamoe_binary(), "tokenize", "--tokenizer", cls.model],
                                               input=text, capture_output=True, text=True,
                                               check=True).stdout.split()]

    def chat(self, **fields):
        """The answer of a successful one-token chat request (messages: one user turn unless given)."""
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "the lazy dog"}], "max_tokens": 1,
                **fields}
        status, answer = self.server.post("/v1/chat/completions", body)
        self.assertEqual(status, 200, answer)
        return answer

    def prompt_ids(self, **fields):
        return self.chat(return_token_ids=True, **fields)["prompt_token_ids"]

    def assert_bad_fields(self, cases):
        """Each (fields, fragment, param): a chat request with `fields` is a 400 whose message holds
        `fragment` and whose param is `param`."""
        for fields, fragment, param in cases:
            with self.subTest(fields=fields):
                body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "the lazy dog"}], **fields}
                status, answer = self.server.post("/v1/chat/completions", body)
                self.assertEqual(status, 400, answer)
                self.assertIn(fragment, answer["error"]["message"])
                self.assertEqual(answer["error"]["param"], param)
