"""The real google-genai SDK pointed at ``tether gateway``, run by .venv-google-adk's python
(tests/frameworks/test_google_adk_gateway.py): the gateway's URL as the client's base URL, a gateway
key as its API key. Arguments: the gateway URL, the key, the run id. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys

from google import genai
from google.genai import errors, types

QUESTION = "What is the weather in Paris?"
WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="The weather in a city",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)},
                            required=["city"]))])


def main(url: str, key: str, run_id: str) -> dict[str, object]:
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=url,  # the two lines a user sets
                                                                      headers={"x-tether-run-id": run_id}))
    manual = types.AutomaticFunctionCallingConfig(disable=True)  # the script answers the tool call itself
    config = types.GenerateContentConfig(tools=[WEATHER], automatic_function_calling=manual)
    first = client.models.generate_content(model="gemini-2.5-flash", contents=QUESTION, config=config)
    [call] = first.function_calls or []
    assert first.candidates and first.candidates[0].content
    history = [types.Content(role="user", parts=[types.Part.from_text(text=QUESTION)]), first.candidates[0].content,
               types.Content(role="user", parts=[types.Part.from_function_response(
                   name=call.name or "", response={"result": "18 C in Paris"})])]
    last = types.GenerateContentConfig(tools=[WEATHER], http_options=types.HttpOptions(
        headers={"x-tether-run-id": run_id, "x-tether-run-end": "ok"}))
    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents=history, config=last))
    refused: list[object] = []
    stranger = genai.Client(api_key="tg-not-a-key-of-this-gateway", http_options=types.HttpOptions(base_url=url))
    try:
        stranger.models.generate_content(model="gemini-2.5-flash", contents=QUESTION)
    except errors.ClientError as exc:
        refused = [type(exc).__name__, exc.code, exc.status]
    return {"call": {"name": call.name, "args": call.args, "id": call.id}, "text": text, "refused": refused}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
