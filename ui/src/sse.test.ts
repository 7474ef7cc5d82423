import { describe, expect, it } from "vitest";

import { EventParser } from "./sse";

describe("EventParser", () => {
  it("yields named events with their data when a blank line ends them", () => {
    const parser = new EventParser();
    expect(parser.feed('event: status\ndata: {"a":1}\n\n')).toEqual([{ event: "status", data: '{"a":1}' }]);
  });

  it("joins events split across chunks, even between \\r and \\n", () => {
    const parser = new EventParser();
    expect(parser.feed("event: prog")).toEqual([]);
    expect(parser.feed("ress\r")).toEqual([]);
    expect(parser.feed('\ndata: {"step":2}\r\n')).toEqual([]);
    expect(parser.feed("\r\n")).toEqual([{ event: "progress", data: '{"step":2}' }]);
  });

  it("skips keep-alive comments and joins multi-line data", () => {
    const parser = new EventParser();
    expect(parser.feed(": keep-alive\n\ndata: one\ndata: two\n\n")).toEqual([{ event: "message", data: "one\ntwo" }]);
  });
});
