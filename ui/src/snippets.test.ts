import { describe, expect, it } from "vitest";

import { authHeader, curlSnippet, javascriptSnippet, pythonLiteral, pythonSnippet } from "./snippets";

const queue = { method: "POST", path: "/flux-dev/v1/dev/textToImage", protocol: "queue", auth_header: "Ocp-Apim-Subscription-Key" };
const request = { baseUrl: "http://127.0.0.1:8000", modelId: "flux-dev", route: queue, body: { prompt: "it's a \"cat\"", seed: 7, enable_safety_checker: false, image_size: { width: 64, height: 64 } } };

describe("snippets", () => {
  it("curl sends the body byte for byte through a quoted here-document", () => {
    const code = curlSnippet(request);
    expect(code).toContain("curl -sS -X POST 'http://127.0.0.1:8000/flux-dev/v1/dev/textToImage'");
    expect(code).toContain('-H "Ocp-Apim-Subscription-Key: $IMAGEGATE_KEY"');
    const json = code.split("<<'JSON'\n")[1].split("\nJSON")[0];
    expect(JSON.parse(json)).toEqual(request.body);
  });

  it("Python calls imagegate_client's run with the body as Python literals", () => {
    const code = pythonSnippet(request);
    expect(code).toContain('Client("http://127.0.0.1:8000", os.environ["IMAGEGATE_KEY"])');
    expect(code).toContain('client.run("flux-dev", {');
    expect(code).toContain('"enable_safety_checker": False');
    expect(pythonLiteral({ a: null, b: [true, 1.5], c: {} })).toBe('{\n    "a": None,\n    "b": [\n        True,\n        1.5,\n    ],\n    "c": {},\n}');
  });

  it("JavaScript polls the queue protocol's polling_url until the request ends", () => {
    const code = javascriptSnippet(request);
    expect(code).toContain('"Ocp-Apim-Subscription-Key": KEY');
    expect(code).toContain("answer.polling_url");
    expect(code).toContain('"CANCELED"');
  });

  it("a bearer route sends Authorization: Bearer", () => {
    const dojo = { ...queue, protocol: "dojo", auth_header: "Authorization" };
    expect(authHeader(dojo, "k")).toEqual(["Authorization", "Bearer k"]);
    expect(javascriptSnippet({ ...request, route: dojo })).toContain('"Authorization": `Bearer ${KEY}`');
    expect(curlSnippet({ ...request, route: dojo })).toContain('-H "Authorization: Bearer $IMAGEGATE_KEY"');
  });
});
