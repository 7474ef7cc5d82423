// The playground's request as code a person can paste: curl, Python (imagegate-client) and
// JavaScript (fetch). The key comes from the IMAGEGATE_KEY environment variable, never inline.

export interface RouteInfo {
  method: string;
  path: string;
  protocol: string;
  auth_header: string;
}

export interface SnippetRequest {
  baseUrl: string;
  modelId: string;
  route: RouteInfo;
  body: Record<string, unknown>;
}

export const KEY_VARIABLE = "IMAGEGATE_KEY";

// The header line each protocol authenticates with ("Authorization" carries a bearer token).
export function authHeader(route: RouteInfo, key: string): [string, string] {
  return route.auth_header.toLowerCase() === "authorization"
    ? ["Authorization", `Bearer ${key}`]
    : [route.auth_header, key];
}

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

export function curlSnippet({ baseUrl, route, body }: SnippetRequest): string {
  const [name, value] = authHeader(route, `$${KEY_VARIABLE}`);
  const json = JSON.stringify(body, null, 2);
  // A quoted here-document passes the JSON byte for byte, whatever quotes the prompt holds.
  const lines = [
    `curl -sS -X ${route.method} ${shellQuote(baseUrl + route.path)} \\`,
    `  -H "${name}: ${value}" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  --data-binary @- <<'JSON'`,
    json,
    "JSON",
  ];
  if (route.protocol === "queue") {
    lines.push(
      `# answers {"request_id", "status": "QUEUED", "polling_url"}; poll the polling_url with the same header:`,
      `# curl -sS -H "${name}: ${value}" <polling_url>`,
    );
  } else if (route.protocol === "dojo") {
    lines.push(`# answers {"jobId", "statusUrl", …}; poll the statusUrl with the same header`);
  }
  return lines.join("\n");
}

// JSON values written as Python literals.
export function pythonLiteral(value: unknown, indent = 0): string {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "None";
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + pythonLiteral(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${pythonLiteral(v, indent + 1)}`).join(",\n")},\n${end}}`;
}

export function pythonSnippet({ baseUrl, modelId, body }: SnippetRequest): string {
  return [
    "# pip install imagegate-client",
    "import os",
    "",
    "from imagegate_client import Client",
    "",
    `client = Client(${JSON.stringify(baseUrl)}, os.environ[${JSON.stringify(KEY_VARIABLE)}])`,
    `result = client.run(${JSON.stringify(modelId)}, ${pythonLiteral(body)})`,
    "print(result.urls, result.seed)",
  ].join("\n");
}

export function javascriptSnippet({ baseUrl, route, body }: SnippetRequest): string {
  const [name, value] = authHeader(route, "KEY");
  const header = value === "KEY" ? `${JSON.stringify(name)}: KEY` : `${JSON.stringify(name)}: \`Bearer \${KEY}\``;
  const lines = [
    "// Node 18+ as an ES module (run.mjs), or a browser console with KEY set by hand",
    `const KEY = process.env.${KEY_VARIABLE};`,
    `const headers = { ${header}, "Content-Type": "application/json" };`,
    `const input = ${JSON.stringify(body, null, 2)};`,
    "",
    `const response = await fetch(${JSON.stringify(baseUrl + route.path)}, {`,
    `  method: ${JSON.stringify(route.method)},`,
    "  headers,",
    "  body: JSON.stringify(input),",
    "});",
    "let answer = await response.json();",
    "if (!response.ok) throw new Error(`${response.status}: ${JSON.stringify(answer)}`);",
  ];
  const poll = (url: string, done: string) => [
    `const pollUrl = ${url};`,
    `while (!${done}) {`,
    "  await new Promise((resolve) => setTimeout(resolve, 1000));",
    "  answer = await (await fetch(pollUrl, { headers })).json();",
    "}",
  ];
  if (route.protocol === "queue") {
    lines.push(...poll("answer.polling_url", `["COMPLETED", "FAILED", "ERROR", "CANCELED"].includes(answer.status)`));
  } else if (route.protocol === "dojo") {
    lines.push(...poll("answer.statusUrl", `["completed", "failed"].includes(answer.status)`));
  }
  lines.push("console.log(JSON.stringify(answer, null, 2));");
  return lines.join("\n");
}
