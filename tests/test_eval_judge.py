"""LLM judges against a local chat-completions server: retries, cache, parsing, metrics, CLI."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from visalign.cli import main
from visalign.eval.judge import (INDOMAIN_PROMPT, JudgeClient, JudgeConfig, JudgeError,
                                 judge_records, parse_indomain_scores, parse_mmhal_rating)
from visalign.io import DataError, write_jsonl

SECRET = "sk-test-secret-4242"


class FakeEndpoint:
    """A tiny OpenAI-compatible server: scripted failures first, then canned replies."""

    def __init__(self):
        self.script: list[tuple] = []  # (status,) or ("sleep", seconds)
        self.requests: list[dict] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                step = state.script.pop(0) if state.script else (200,)
                if step[0] == "sleep":
                    time.sleep(step[1])
                    step = (200,)
                if step[0] != 200:
                    self._send(step[0], {"error": {"message": "scripted failure"}},
                               {"Retry-After": "0"} if step[0] == 429 else {})
                    return
                text = state.reply(body["messages"])
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                 "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                           "total_tokens": 2}})

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up: that is the point of the test

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @staticmethod
    def reply(messages):
        return FakeEndpoint._base_reply(messages)

    @staticmethod
    def _base_reply(messages):
        text = messages[-1]["content"]
        if "GOOD ANSWER" in text:
            return "Accurate and detailed.\nRating: 5"
        if "BAD ANSWER" in text:
            return "It invents a cat.\nRating: 1"
        if "SOLID ANSWER" in text:
            return "Instruction Following score: 8\nDetail Accuracy score: 6"
        if "OK ANSWER" in text:
            return "Instruction Following score: 6\nDetail Accuracy score: 10"
        return "I am not sure how to rate this."

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    ep = FakeEndpoint()
    yield ep
    ep.close()


@pytest.fixture
def client_factory(endpoint, tmp_path, monkeypatch):
    for name in ("VISALIGN_JUDGE_BASE_URL", "VISALIGN_JUDGE_MODEL", "VISALIGN_JUDGE_API_KEY",
                 "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def make(**kw):
        cfg = JudgeConfig(base_url=endpoint.url, model="judge-1", backoff=0.01,
                          cache_dir=str(tmp_path / "cache"), timeout=5.0, workers=1)
        for k, v in kw.items():
            setattr(cfg, k, v)
        return JudgeClient(cfg, api_key=SECRET)
    return make


MSG = [{"role": "user", "content": "GOOD ANSWER"}]


def test_retries_on_429_and_5xx(endpoint, client_factory):
    endpoint.script = [(429,), (500,), (503,)]
    client = client_factory(max_retries=3)
    assert client.chat(MSG) == "Accurate and detailed.\nRating: 5"
    assert len(endpoint.requests) == 4 and client.stats["retries"] == 3
    assert endpoint.requests[0]["auth"] == f"Bearer {SECRET}"
    assert endpoint.requests[0]["body"]["model"] == "judge-1"


def test_gives_up_and_does_not_retry_client_errors(endpoint, client_factory):
    endpoint.script = [(500,)] * 3
    with pytest.raises(JudgeError, match="after 3 attempts"):
        client_factory(max_retries=2).chat(MSG)
    assert len(endpoint.requests) == 3
    endpoint.script = [(400,)]
    with pytest.raises(JudgeError, match="HTTP 400"):
        client_factory(max_retries=5).chat(MSG)
    assert len(endpoint.requests) == 4  # a bad request is not retried


def test_timeout_is_retried(endpoint, client_factory):
    endpoint.script = [("sleep", 1.0)]
    client = client_factory(timeout=0.3, max_retries=2)
    assert client.chat(MSG).endswith("Rating: 5")
    assert client.stats["retries"] == 1


def test_cache_makes_reruns_free(endpoint, client_factory, tmp_path):
    client = client_factory()
    first = client.chat(MSG)
    assert client.chat(MSG) == first and len(endpoint.requests) == 1
    # a fresh client on the same cache: no request, even with the endpoint gone
    endpoint.close()
    again = client_factory()
    assert again.chat(MSG) == first and again.stats == {"requests": 0, "cache_hits": 1,
                                                        "retries": 0}
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["reply"] == first and entry["messages"] == MSG and entry["model"] == "judge-1"
    assert SECRET not in files[0].read_text()
    # other params are another request
    assert client.cache_key(MSG) != client.cache_key(MSG, temperature=0.7)


# eval_gpt_mmhal.py: the one s in 0..6 with f"rating: {s}" in the lower-cased reply, else none
@pytest.mark.parametrize("reply,expected", [
    ("The answer is fine.\nRating: 4", 4),
    ("rating: 2, very informative, with hallucination", 2),
    ("Rating: 4 ... so the final Rating: 4", 4),   # the same N twice is one rating
    ("Rating: 4.5", 4),                            # substring match, as there
    ("Rating: 10", 1),                             # "rating: 1" occurs in it
    ("**Rating:** 6", None),                       # no "rating: 6" substring
    ("Rating: 3 or maybe Rating: 5", None),        # two ratings
    ("Rating: 7", None),
    ("no rating here", None),
])
def test_parse_mmhal(reply, expected):
    assert parse_mmhal_rating(reply) == expected


@pytest.mark.parametrize("reply,expected", [
    ("Instruction Following score: 8\nDetail Accuracy score: 6", (8.0, 6.0)),
    ("Instruction Following score: [9]\nDetail Accuracy score: [0]", (9.0, 0.0)),
    ("Instruction Following score: 8", None),
    ("Instruction Following score: 11\nDetail Accuracy score: 6", None),
])
def test_parse_indomain(reply, expected):
    assert parse_indomain_scores(reply) == expected


def test_mmhal_metrics_count_unparsed(endpoint, client_factory):
    recs = [{"question_id": i, "question": "What is shown?", "gt_answer": "A dog.",
             "image_content": ["Dog", "Grass"], "question_type": t}
            for i, t in enumerate(["count", "count", "attribute"])]
    answers = [{"question_id": 0, "answer": "GOOD ANSWER"},
               {"question_id": 1, "answer": "BAD ANSWER"},
               {"question_id": 2, "answer": "unrateable"}]
    res = judge_records("mmhal", client_factory(), recs, answers)
    # ratings 5 and 1 parsed, the unparsed reply scores 0 as in the reference: mean 2, 2 of 3 < 3
    assert res["metrics"] == {"mmhal_score": 2.0, "mmhal_hallucination_rate": 2 / 3,
                              "judge_unparsed": 1, "judge_n": 3}
    assert res["mmhal_by_type"] == {"count": 3.0, "attribute": 0.0}
    assert [i["rating"] for i in res["items"]] == [5, 1, 0]
    assert [i["parsed"] for i in res["items"]] == [True, True, False]
    prompt = endpoint.requests[0]["body"]["messages"][0]["content"]
    assert "### Image Contents\nDog, Grass" in prompt and "### Question\nWhat is shown?" in prompt
    assert "### Standard Human-Generated Answer\nA dog." in prompt


def test_indomain_prompt_and_means(endpoint, client_factory):
    recs = [{"id": "a", "question": "Describe it.", "caption": "A dog on grass."},
            {"id": "b", "question": "Describe it.", "caption": "A cat on a sofa."}]
    answers = [{"id": "a", "answer": "SOLID ANSWER"}, {"id": "b", "answer": "OK ANSWER"}]
    res = judge_records("indomain", client_factory(workers=2), recs, answers)
    # (8, 6) and (6, 10)
    assert res["metrics"] == {"indomain_instruction": 7.0, "indomain_accuracy": 8.0,
                              "judge_unparsed": 0, "judge_n": 2}
    msgs = endpoint.requests[0]["body"]["messages"]
    assert msgs[0] == {"role": "system", "content": INDOMAIN_PROMPT}
    assert INDOMAIN_PROMPT.startswith("You are an AI visual assistant that analyzes a single "
                                      "image based on its ground-truth DETAILED IMAGE CAPTION.")
    assert "DETAILED IMAGE CAPTION:\nA" in msgs[1]["content"]


def test_missing_answers_are_an_error(client_factory):
    recs = [{"id": str(i), "question": "q", "caption": "c"} for i in range(3)]
    with pytest.raises(DataError, match=r"2 of 3 records have no answer \(id 1, 2\)"):
        judge_records("indomain", client_factory(), recs, [{"id": "0", "answer": "x"}])


def test_cli_reads_env_and_never_writes_the_key(endpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("VISALIGN_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("VISALIGN_JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", endpoint.url)  # fallback names
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("VISALIGN_JUDGE_MODEL", "judge-env")
    write_jsonl(tmp_path / "recs.jsonl", [
        {"question_id": 1, "question": "q?", "gt_answer": "g", "image_content": "Dog"},
        {"question_id": 2, "question": "q?", "gt_answer": "g", "image_content": "Cat"}])
    write_jsonl(tmp_path / "ans.jsonl", [{"question_id": 1, "answer": "GOOD ANSWER"},
                                         {"question_id": 2, "answer": "BAD ANSWER"}])
    out = tmp_path / "judge.json"
    argv = ["eval", "judge", "--kind", "mmhal", "--records", str(tmp_path / "recs.jsonl"),
            "--answers", str(tmp_path / "ans.jsonl"), "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "backoff=0.01"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["metrics"]["mmhal_score"] == 3.0 and res["judge"]["model"] == "judge-env"
    assert "judge model: judge-env" in (tmp_path / "judge.md").read_text()
    assert endpoint.requests[0]["auth"] == f"Bearer {SECRET}"
    assert endpoint.requests[0]["path"] == "/v1/chat/completions"
    for f in [out, tmp_path / "judge.md", *(tmp_path / "c").rglob("*.json")]:
        assert SECRET not in f.read_text()
    # the re-run is served from the cache
    assert main(argv) == 0 and len(endpoint.requests) == 2


def test_cli_judge_errors_are_one_line(endpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("VISALIGN_JUDGE_MODEL", raising=False)
    write_jsonl(tmp_path / "recs.jsonl", [{"id": 1, "question": "q", "caption": "c",
                                           "answer": "a"}])
    rc = main(["eval", "judge", "--kind", "indomain", "--records",
               str(tmp_path / "recs.jsonl"), "--base-url", endpoint.url, "--out",
               str(tmp_path / "o.json")])
    assert rc == 2 and "no judge model" in capsys.readouterr().err


def test_suite_judges_descriptions_against_reference_captions(endpoint, client_factory,
                                                             tmp_path):
    from visalign.eval.suite import judge_descriptions
    from visalign.io import write_json

    caps = tmp_path / "captions.json"
    write_json(caps, {"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog on grass."},
        {"id": 2, "image_id": 1, "caption": "A brown dog."},
        {"id": 3, "image_id": 2, "caption": "A cat on a sofa."}]})
    answers = [{"id": "v1", "image_id": 1, "prompt": "Describe it.", "answer": "SOLID ANSWER"},
               {"id": "v2", "image_id": 2, "prompt": "Describe it.", "answer": "OK ANSWER"}]
    res = judge_descriptions(answers, caps, client=client_factory())
    assert res["metrics"]["indomain_instruction"] == 7.0
    assert res["metrics"]["indomain_accuracy"] == 8.0
    first = endpoint.requests[0]["body"]["messages"][1]["content"]
    assert "A dog on grass. A brown dog." in first and "SOLID ANSWER" in first


def test_mmhal_prompt_is_the_reference_template_filled_positionally(endpoint, client_factory):
    from visalign.eval.judge import MMHAL_TEMPLATE, mmhal_messages

    assert MMHAL_TEMPLATE.startswith(
        "Please act as an impartial and objective judge and evaluate the quality of the "
        "response provided by a Large Multimodal Model (LMM) to the user question.")
    assert "### Example 5:" in MMHAL_TEMPLATE and MMHAL_TEMPLATE.count("{}") == 4
    assert "please be a bit more cautious during evalutation." in MMHAL_TEMPLATE  # sic
    msgs = mmhal_messages("Q?", "GT.", ["Lynx", "Cat"], "ANSWER")
    assert msgs == [{"role": "user", "content": MMHAL_TEMPLATE.format("Lynx, Cat", "Q?", "GT.",
                                                                      "ANSWER")}]
    assert msgs[0]["content"].endswith("### Image Contents\nLynx, Cat\n\n### Question\nQ?\n\n"
                                       "### Standard Human-Generated Answer\nGT.\n\n"
                                       "### LMM Response to Evaluate\nANSWER\n")


def mmhal_template_records(n=96):
    """MMHal-Bench's response_template.json layout (no ids), model_answer filled in."""
    from visalign.eval.judge import MMHAL_TYPES

    answers = ["GOOD ANSWER", "BAD ANSWER", "unrateable", "TWO RATINGS"]
    return [{"question_type": MMHAL_TYPES[i % 8], "question_topic": "outdoor",
             "image_id": f"img{i}", "image_src": f"https://example.org/{i}.jpg",
             "image_content": ["Dog"], "question": f"Question {i}?", "gt_answer": "A dog.",
             "model_answer": answers[i % 4]} for i in range(n)]


def test_cli_reads_the_template_file_as_it_ships(endpoint, tmp_path, monkeypatch, capsys):
    from visalign.io import write_json

    monkeypatch.setattr(FakeEndpoint, "reply", staticmethod(
        lambda m: "Rating: 3 and Rating: 5" if "TWO RATINGS" in m[-1]["content"]
        else FakeEndpoint._base_reply(m)))
    recs = mmhal_template_records()
    write_json(tmp_path / "response_template.json", recs)
    out = tmp_path / "mmhal.json"
    assert main(["eval", "judge", "--kind", "mmhal", "--records",
                 str(tmp_path / "response_template.json"), "--base-url", endpoint.url,
                 "--model", "judge-x", "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                 "backoff=0.01"]) == 0
    res = json.loads(out.read_text())
    # answers cycle GOOD (5), BAD (1), unrateable (0), two ratings (0): mean 1.5, 3 of 4 < 3
    assert res["metrics"]["mmhal_score"] == 1.5
    assert res["metrics"]["mmhal_hallucination_rate"] == 0.75
    assert res["metrics"]["judge_unparsed"] == 48 and res["metrics"]["judge_n"] == 96
    # type i % 8 always gets answer i % 4: GOOD, BAD, unrateable, two ratings, GOOD, ...
    assert res["mmhal_by_type"] == {"attribute": 5.0, "adversarial": 1.0, "comparison": 0.0,
                                    "counting": 0.0, "relation": 5.0, "environment": 1.0,
                                    "holistic": 0.0, "other": 0.0}
    assert res["items"][0]["index"] == 0 and "notes" not in res
    printed = capsys.readouterr().out
    assert "judge model: judge-x" in printed and "scored 0" in printed


def test_types_follow_the_reference_order_without_a_type_field(endpoint, client_factory):
    recs = mmhal_template_records()
    for r in recs:
        del r["question_type"]
    res = judge_records("mmhal", client_factory(workers=4), recs)
    assert list(res["mmhal_by_type"]) == ["attribute", "adversarial", "comparison", "counting",
                                          "relation", "environment", "holistic", "other"]
    short = judge_records("mmhal", client_factory(), mmhal_template_records(8))
    assert short["notes"] == ["8 questions judged; MMHal-Bench has 96"]


def test_an_unfilled_template_is_an_error(client_factory):
    recs = mmhal_template_records(8)
    for r in recs:
        r["model_answer"] = ""
    with pytest.raises(DataError, match="every answer is empty"):
        judge_records("mmhal", client_factory(), recs)
