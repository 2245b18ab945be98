"""Continuous batching in `megamoe serve`: greedy answers do not depend on what else is in the
batch; a client that disconnects frees its place at once; a full queue answers 429; SIGTERM and
SIGINT finish (or, past the grace period, cancel) the requests in flight and end cleanly, however
many signals arrive.

    cd tests/serve && MEGAMOE_BIN=/path/to/megamoe /usr/bin/python3 -m unittest -v test_serve_batching
"""
import concurrent.futures
import json
import signal
import tempfile
import time
import unittest

import serve_harness as h

LONG = 20000  # tokens: a request that runs far longer than any test waits


class Batching(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="megamoe-serve-batching-")
        cls.model = h.make_model(cls.tmp.name, with_tokenizer=False)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def start_server(self, *flags):
        server = h.Server(self.model, *flags)
        self.addCleanup(server.stop, signal.SIGKILL)
        return server

    def test_greedy_answers_do_not_depend_on_the_batch(self):
        server = self.start_server("--max-batch", 8)
        prompts = [[1 + i, 40 + 3 * i, 7] * (1 + i % 3) for i in range(6)]

        def greedy(prompt, max_tokens=12, delay=0.0):
            time.sleep(delay)
            return server.complete(prompt=prompt, max_tokens=max_tokens, ignore_eos=True)["choices"][0]["token_ids"]

        alone = [greedy(p) for p in prompts]
        expected = h.run_megamoe("generate", "--model", self.model, "--prompt-ids", ",".join(map(str, prompts[0])),
                                 "--max-tokens", 12, "--ignore-eos", "--print-ids").split()
        self.assertEqual(alone[0], [int(t) for t in expected])
        # The same prompts together, joining at different token boundaries, among longer neighbours.
        with concurrent.futures.ThreadPoolExecutor(len(prompts) + 2) as pool:
            neighbours = [pool.submit(greedy, [9, 9, 9, 9, 9, 9, 9, 9], 60) for _ in range(2)]
            together = [pool.submit(greedy, p, 12, 0.005 * i) for i, p in enumerate(prompts)]
            self.assertEqual([f.result(h.TIMEOUT) for f in together], alone)
            for f in neighbours:
                self.assertEqual(len(f.result(h.TIMEOUT)), 60)
        text = server.metrics()
        self.assertGreater(h.metric(text, "megamoe_batch_size_sum"), h.metric(text, "megamoe_batch_size_count"),
                           "some steps ran several sequences")

    def assert_slot_free(self, server):
        """The batch (of one) and the queue empty within moments of the clients leaving, long before
        their requests would have ended, and a short request is answered at once."""
        def empty():
            text = server.metrics()
            return h.metric(text, "megamoe_running_sequences") == 0 and h.metric(text, "megamoe_queue_depth") == 0
        self.assertTrue(h.wait_until(empty, 5))
        start = time.monotonic()
        self.assertEqual(len(server.complete(prompt=[3, 4], max_tokens=4, ignore_eos=True)["choices"][0]["token_ids"]),
                         4)
        self.assertLess(time.monotonic() - start, 5)

    def test_disconnect_frees_the_slot(self):
        server = self.start_server("--max-batch", 1, "--max-queue", 4)
        connection, response = server.open_stream("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": LONG,
                                                                       "ignore_eos": True})
        response.readline()  # the first event: the request runs
        connection.close()
        self.assert_slot_free(server)

        # A plain (not streamed) request whose client leaves while it runs.
        connection = server.connection()
        connection.request("POST", "/v1/completions", body=f'{{"model": "{h.MODEL_NAME}", "prompt": [1, 2], '
                                                            f'"max_tokens": {LONG}, "ignore_eos": true}}')
        self.assertTrue(h.wait_until(lambda: h.metric(server.metrics(), "megamoe_running_sequences") == 1, 5))
        connection.close()
        self.assert_slot_free(server)
        self.assertIn('status="499"', server.metrics())

    def test_full_queue_answers_429(self):
        server = self.start_server("--max-batch", 1, "--max-queue", 1)
        body = {"prompt": [1, 2, 3], "max_tokens": LONG, "ignore_eos": True}
        running, response = server.open_stream("/v1/completions", body)
        response.readline()
        waiting, _ = server.open_stream("/v1/completions", body)
        self.assertTrue(h.wait_until(lambda: h.metric(server.metrics(), "megamoe_queue_depth") == 1, 5))
        status, headers, data = server.request("POST", "/v1/completions",
                                               {"model": h.MODEL_NAME, "prompt": [1], "max_tokens": 2})
        self.assertEqual(status, 429, data)
        self.assertIn("max-queue", json.loads(data)["error"]["message"])
        self.assertEqual(headers.get("Retry-After"), "1")
        running.close()
        waiting.close()
        self.assert_slot_free(server)

    def test_sigterm_finishes_requests_in_flight(self):
        server = self.start_server("--shutdown-grace", 120)
        connection, response = server.open_stream("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 300,
                                                                       "ignore_eos": True})
        events = [json.loads(response.readline()[len("data: "):])]
        server.process.send_signal(signal.SIGTERM)
        events += h.read_events(response)
        connection.close()
        self.assertEqual(sum(len(e["choices"][0]["token_ids"]) for e in events), 300)
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "length")
        self.assertEqual(server.stop(), 0)

    def test_sigint_refuses_new_requests_then_cancels_after_the_grace_period(self):
        server = self.start_server("--shutdown-grace", 3)
        connection, response = server.open_stream("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": LONG,
                                                                       "ignore_eos": True})
        response.readline()
        start = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        self.assertTrue(h.wait_until(lambda: any("finishing" in line for line in server.log), 2))
        status, _, data = server.request("POST", "/v1/completions", {"model": h.MODEL_NAME, "prompt": [1],
                                                                      "max_tokens": 2})
        self.assertEqual(status, 503, data)
        self.assertEqual(json.loads(server.request("GET", "/health")[2]), {"status": "shutting down"})
        events = h.read_events(response)
        connection.close()
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "cancelled")
        self.assertEqual(server.stop(), 0)
        self.assertLess(time.monotonic() - start, 20)

    def test_signals_that_keep_coming_during_the_shutdown_still_end_it_cleanly(self):
        # Any thread may be handed a signal, libraries' own threads included: each one must
        # count as a request to stop, never kill the server on its way out.
        server = self.start_server("--shutdown-grace", 0)
        deadline = time.monotonic() + h.TIMEOUT
        while server.process.poll() is None and time.monotonic() < deadline:
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        self.assertEqual(server.stop(), 0, "".join(server.log))
        self.assertIn("megamoe: stopped\n", server.log)


if __name__ == "__main__":
    unittest.main()
