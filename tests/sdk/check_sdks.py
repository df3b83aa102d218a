"""Drives a running gateway with the official openai and anthropic Python SDKs and prints
what each client observed as one JSON object (the Rust test asserts on it).

The gateway must front the test suite's mock upstream and scripted scorer: a policy id
followed by "!" in the judged text scores high, and the mock answers with what follows
"say:" in the prompt ("~" turned into "!").

Usage: python check_sdks.py http://127.0.0.1:PORT
"""

import json
import sys

import anthropic
import openai


def openai_checks(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    seen = {}
    messages = [{"role": "user", "content": "tell me about hate! please"}]
    try:
        client.chat.completions.create(model="m", messages=messages)
        seen["blocked_prompt"] = "no error"
    except openai.BadRequestError as e:
        seen["blocked_prompt"] = {"status": e.status_code, "code": e.code,
                                  "inner": e.body.get("innererror", {}).get("code")}
    clean = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}])
    seen["clean_content"] = clean.choices[0].message.content
    blocked = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "say: hate~ reply"}])
    seen["blocked_answer"] = [blocked.choices[0].finish_reason, blocked.choices[0].message.content]
    stream = client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "say: hate~ streamed"}])
    finish, text = None, ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    seen["blocked_stream"] = [finish, text]
    clean_stream = client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "say: fine words"}])
    seen["clean_stream"] = "".join(
        c.choices[0].delta.content or "" for c in clean_stream if c.choices)
    mod = client.moderations.create(input=["hate! here", "calm"])
    seen["moderation"] = [[r.flagged, r.categories.hate, round(r.category_scores.violence, 4)] for r in mod.results]
    resp = client.responses.create(model="m", input="say: sexual~ x")
    seen["responses"] = [resp.status, resp.incomplete_details.reason if resp.incomplete_details else None,
                         resp.output_text]
    events = [e.type for e in client.responses.create(model="m", input="say: sexual~ x", stream=True)]
    seen["responses_stream"] = events
    return seen


def anthropic_checks(base):
    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    seen = {}
    try:
        client.messages.create(model="c", max_tokens=50,
                               messages=[{"role": "user", "content": "dangerous! stuff"}])
        seen["blocked_prompt"] = "no error"
    except anthropic.BadRequestError as e:
        seen["blocked_prompt"] = {"status": e.status_code, "type": e.body["error"]["type"]}
    msg = client.messages.create(model="c", max_tokens=50,
                                 messages=[{"role": "user", "content": "say: dangerous~ x"}])
    seen["blocked_answer"] = [msg.stop_reason, msg.content[0].text]
    with client.messages.stream(model="c", max_tokens=50,
                                messages=[{"role": "user", "content": "say: dangerous~ y"}]) as s:
        final = s.get_final_message()
    seen["blocked_stream"] = [final.stop_reason, final.content[0].text]
    with client.messages.stream(model="c", max_tokens=50,
                                messages=[{"role": "user", "content": "say: all calm"}]) as s:
        final = s.get_final_message()
    seen["clean_stream"] = [final.stop_reason, final.content[0].text]
    return seen


if __name__ == "__main__":
    base = sys.argv[1]
    print(json.dumps({"openai": openai_checks(base), "anthropic": anthropic_checks(base)}))
