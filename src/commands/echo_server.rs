//! The built-in tiny MCP server, `forkline echo-server`.
//!
//! It owns one thing: answering newline-delimited JSON-RPC 2.0 on a reader and
//! a writer, in both MCP protocol eras, with a single tool, `echo`. It is the
//! default child of `forkline serve` and the known-good peer of the tests and
//! benchmarks, so it is strict about what it sends and lenient about what it
//! accepts. Each request picks its own era (PRODUCT.md "Protocol eras";
//! 2026-07-28 basic/versioning "Backward Compatibility"): a request carrying
//! `params._meta["io.modelcontextprotocol/protocolVersion"]` is served
//! statelessly as 2026-07-28, anything else as the handshake era. Nothing is
//! remembered between requests, so no handshake is ever required and the two
//! eras may even interleave on one stream.

use std::io::{self, BufRead, Write};

use serde::Serialize;
use serde_json::{Map, Value, json};

/// The name in `serverInfo` (handshake era) and in the `_meta` stamp (modern).
const SERVER_NAME: &str = "forkline-echo-server";

/// Versions served per request through the `_meta` envelope (2026-07-28
/// basic/versioning "Terminology": modern).
const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

/// Versions reachable through `initialize` (2026-07-28 basic/versioning
/// "Terminology": legacy), newest first.
const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The counter-offer to an `initialize` naming a version we do not speak
/// (2025-11-25 lifecycle "Version Negotiation": answer the latest we support).
const LATEST_HANDSHAKE_VERSION: &str = "2025-11-25";

/// Reserved `_meta` keys (2026-07-28 basic/index "`_meta`").
const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC 2.0 error codes, and MCP's `UnsupportedProtocolVersion`
/// (2026-07-28 basic/index "Error Codes").
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// Serves MCP on `input`/`output` until `input` reaches EOF. Blocks.
///
/// One response line per request, flushed at once; notifications and
/// responses get no reply. Bad input never ends the loop, it is answered with
/// a JSON-RPC error; only I/O errors of `input` or `output` are returned.
/// Lines are not capped here: the proxy in front of a child caps messages.
pub fn run(mut input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bytes, not `read_line`: invalid UTF-8 must become a -32700 answer,
        // not an I/O error that ends the server.
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        match handle_line(&line) {
            Reply::None => {}
            Reply::One(reply) => write_line(&mut output, &reply)?,
            Reply::Batch(replies) => write_line(&mut output, &replies)?,
        }
    }
}

/// The protocol era one request is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Era {
    /// 2024-11-05 to 2025-11-25: results exactly as those revisions define them.
    Handshake,
    /// 2026-07-28: results also carry `resultType` and the serverInfo stamp.
    Modern,
}

/// A JSON-RPC error object.
#[derive(Debug, Serialize)]
struct RpcError {
    code: i64,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }
}

/// One outgoing response line.
#[derive(Debug, Serialize)]
struct Response {
    jsonrpc: &'static str,
    id: Value,
    #[serde(flatten)]
    outcome: Outcome,
}

impl Response {
    fn new(id: Value, outcome: Outcome) -> Response {
        Response {
            jsonrpc: "2.0",
            id,
            outcome,
        }
    }

    fn error(id: Value, code: i64, message: impl Into<String>) -> Response {
        Response::new(id, Outcome::Error(RpcError::new(code, message)))
    }
}

/// Serialized as the `result` or the `error` member.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Result(Map<String, Value>),
    Error(RpcError),
}

/// What a parsed line turned out to be.
#[derive(Debug)]
enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
    },
    /// A response to a request we never sent.
    Response,
    /// Not a JSON-RPC message; `id` is the request's if it could be read.
    Invalid {
        id: Value,
        reason: &'static str,
    },
}

/// Writes `response` as one line and flushes, so the peer sees each answer
/// as soon as it is made (2026-07-28 transports/stdio: one message per line).
fn write_line(output: &mut impl Write, response: &impl Serialize) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    output.write_all(&bytes)?;
    output.flush()
}

/// What one line gets back.
enum Reply {
    None,
    One(Response),
    /// The answers to a batch's requests, as one array (JSON-RPC 2.0 §6).
    Batch(Vec<Response>),
}

/// Answers one raw line.
fn handle_line(line: &[u8]) -> Reply {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.trim_ascii().is_empty() {
        return Reply::None;
    }
    let message: Value = match serde_json::from_slice(line) {
        Ok(message) => message,
        Err(err) => {
            log::debug!("echo-server: line is not JSON: {err}");
            return Reply::One(Response::error(
                Value::Null,
                PARSE_ERROR,
                format!("parse error: {err}"),
            ));
        }
    };
    match message {
        // Batches are MCP 2025-03-26's: each item is answered, together.
        Value::Array(items) if !items.is_empty() => {
            let replies: Vec<Response> = items.into_iter().filter_map(handle_message).collect();
            if replies.is_empty() {
                Reply::None
            } else {
                Reply::Batch(replies)
            }
        }
        message => handle_message(message).map_or(Reply::None, Reply::One),
    }
}

/// Answers one message; `None` when nothing is to be sent back.
fn handle_message(message: Value) -> Option<Response> {
    match classify(message) {
        Incoming::Request { id, method, params } => {
            log::debug!("echo-server: request method={method}");
            let outcome = match answer(&method, params) {
                Ok(result) => Outcome::Result(result),
                Err(error) => Outcome::Error(error),
            };
            Some(Response::new(id, outcome))
        }
        Incoming::Notification { method } => {
            // A notification never gets a reply (2026-07-28 basic/index
            // "Notifications"); none changes anything here, not even
            // `notifications/initialized`, since no state is kept.
            log::debug!("echo-server: ignoring notification method={method}");
            None
        }
        Incoming::Response => {
            // Answering a response could start an endless exchange.
            log::debug!("echo-server: ignoring a response; this server sends no requests");
            None
        }
        Incoming::Invalid { id, reason } => Some(Response::error(id, INVALID_REQUEST, reason)),
    }
}

/// Sorts a JSON value into the JSON-RPC message kinds (JSON-RPC 2.0 §4, §5;
/// 2026-07-28 basic/index "Messages": ids are strings or integers, never null).
fn classify(message: Value) -> Incoming {
    let Value::Object(mut object) = message else {
        return Incoming::Invalid {
            id: Value::Null,
            reason: "expected a JSON-RPC object",
        };
    };
    let id = object.remove("id");
    let readable_id = match &id {
        Some(id) if is_valid_id(id) => id.clone(),
        _ => Value::Null,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Incoming::Invalid {
            id: readable_id,
            reason: "`jsonrpc` must be \"2.0\"",
        };
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => {
            return Incoming::Invalid {
                id: readable_id,
                reason: "`method` must be a string",
            };
        }
        None if id.is_some() && (object.contains_key("result") || object.contains_key("error")) => {
            return Incoming::Response;
        }
        None => {
            return Incoming::Invalid {
                id: readable_id,
                reason: "missing `method`",
            };
        }
    };
    match id {
        None => Incoming::Notification { method },
        Some(id) if is_valid_id(&id) => Incoming::Request {
            id,
            method,
            params: object.remove("params"),
        },
        Some(_) => Incoming::Invalid {
            id: Value::Null,
            reason: "`id` must be a string or an integer",
        },
    }
}

fn is_valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(number) => number.is_i64() || number.is_u64(),
        _ => false,
    }
}

/// Answers one request: picks its era, then the method.
fn answer(method: &str, params: Option<Value>) -> Result<Map<String, Value>, RpcError> {
    let params = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(_) => return Err(RpcError::new(INVALID_PARAMS, "`params` must be an object")),
    };
    let era = request_era(method, &params)?;
    let (body, cacheable) = match method {
        // A 2026-07-28 method: its result is modern whatever the request.
        "server/discover" => return Ok(stamp_modern(discover_body(), true)),
        "initialize" => (initialize_body(&params), false),
        // Removed in 2026-07-28, still answered there: leniency costs nothing.
        "ping" => (Map::new(), false),
        "tools/list" => (tools_list_body(), true),
        "tools/call" => (call_tool(&params)?, false),
        _ => {
            let message = format!("method not found: `{method}`");
            return Err(RpcError::new(METHOD_NOT_FOUND, message));
        }
    };
    Ok(match era {
        // Handshake-era results stay exactly as before 2026: some deployed
        // SDKs reject extra keys, on empty results in particular.
        Era::Handshake => body,
        Era::Modern => stamp_modern(body, cacheable),
    })
}

/// The era of one request, after checking its 2026-07-28 envelope if it has
/// one (2026-07-28 basic/index "Per-request protocol fields").
fn request_era(method: &str, params: &Map<String, Value>) -> Result<Era, RpcError> {
    // `initialize` exists only in the handshake era, whatever its `_meta`.
    if method == "initialize" {
        return Ok(Era::Handshake);
    }
    // Only the version key marks a modern request: legacy requests may carry
    // `_meta` too (`progressToken`).
    let Some(meta) = params.get("_meta").and_then(Value::as_object) else {
        return Ok(Era::Handshake);
    };
    let Some(version) = meta.get(PROTOCOL_VERSION_KEY) else {
        return Ok(Era::Handshake);
    };
    let Some(version) = version.as_str() else {
        let message = format!("`_meta` key `{PROTOCOL_VERSION_KEY}` must be a string");
        return Err(RpcError::new(INVALID_PARAMS, message));
    };
    // The version is checked before the other fields: which fields are
    // required is a rule of the version, and we only know ours.
    if !MODERN_VERSIONS.contains(&version) {
        return Err(unsupported_version(version));
    }
    if !meta
        .get(CLIENT_CAPABILITIES_KEY)
        .is_some_and(Value::is_object)
    {
        let message = format!("`_meta` lacks the required object `{CLIENT_CAPABILITIES_KEY}`");
        return Err(RpcError::new(INVALID_PARAMS, message));
    }
    Ok(Era::Modern)
}

/// `UnsupportedProtocolVersionError` (2026-07-28 basic/versioning "Protocol
/// Version Negotiation"). `supported` names the handshake versions too, as the
/// spec's example does: they tell a dual-era client it may fall back to
/// `initialize` rather than give up.
fn unsupported_version(requested: &str) -> RpcError {
    let message = if HANDSHAKE_VERSIONS.contains(&requested) {
        format!("protocol version {requested} is served only through `initialize`")
    } else {
        format!("unsupported protocol version {requested}")
    };
    RpcError {
        code: UNSUPPORTED_PROTOCOL_VERSION,
        message,
        data: Some(json!({ "supported": supported_versions(), "requested": requested })),
    }
}

/// Every version served, newest first, so a client taking the first one it
/// knows takes the modern one.
fn supported_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .rev()
        .chain(HANDSHAKE_VERSIONS)
        .copied()
        .collect()
}

fn server_info() -> Value {
    json!({ "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION") })
}

fn capabilities() -> Value {
    json!({ "tools": {} })
}

/// Adds what every 2026-07-28 result carries: `resultType` (basic/index
/// "Result Responses": MUST) and the serverInfo stamp in `_meta`
/// ("Per-response protocol fields": SHOULD), plus the cache hints that
/// cacheable results require (server/discover; the schema's CacheableResult).
fn stamp_modern(mut body: Map<String, Value>, cacheable: bool) -> Map<String, Value> {
    body.insert("resultType".into(), "complete".into());
    let mut meta = Map::new();
    meta.insert(SERVER_INFO_KEY.into(), server_info());
    body.insert("_meta".into(), meta.into());
    if cacheable {
        // Nothing here depends on the caller, so it may be shared; ttl 0
        // (immediately stale) keeps clients asking the server, which is what
        // tests and benchmarks of the proxy expect.
        body.insert("ttlMs".into(), 0.into());
        body.insert("cacheScope".into(), "public".into());
    }
    body
}

/// `DiscoverResult` without the modern stamp (2026-07-28 server/discover).
fn discover_body() -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("supportedVersions".into(), json!(supported_versions()));
    body.insert("capabilities".into(), capabilities());
    body
}

/// `InitializeResult`: echo the client's version if we speak it, else offer
/// ours (2025-11-25 lifecycle "Version Negotiation"). Lenient: missing or
/// malformed params get the counter-offer rather than an error.
fn initialize_body(params: &Map<String, Value>) -> Map<String, Value> {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let version = match requested {
        Some(version) if HANDSHAKE_VERSIONS.contains(&version) => version,
        _ => LATEST_HANDSHAKE_VERSION,
    };
    let mut body = Map::new();
    body.insert("protocolVersion".into(), version.into());
    body.insert("capabilities".into(), capabilities());
    body.insert("serverInfo".into(), server_info());
    body
}

fn tools_list_body() -> Map<String, Value> {
    let echo = json!({
        "name": "echo",
        "description": "Returns its `text` argument unchanged.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "text": { "type": "string", "description": "The text to send back." }
            },
            "required": ["text"]
        }
    });
    let mut body = Map::new();
    body.insert("tools".into(), json!([echo]));
    body
}

/// `tools/call` of `echo`. A bad call is a JSON-RPC error, not a result with
/// `isError`, so a test sees a mistake in its own request at once.
fn call_tool(params: &Map<String, Value>) -> Result<Map<String, Value>, RpcError> {
    let name = params.get("name").and_then(Value::as_str);
    if name != Some("echo") {
        let message = match name {
            Some(name) => format!("unknown tool `{name}`; this server has one tool, `echo`"),
            None => "`name` must be a string naming a tool; this server has `echo`".to_owned(),
        };
        return Err(RpcError::new(INVALID_PARAMS, message));
    }
    let text = params
        .get("arguments")
        .and_then(|arguments| arguments.get("text"));
    let Some(text) = text.and_then(Value::as_str) else {
        let message = "tool `echo` requires a string argument `text`";
        return Err(RpcError::new(INVALID_PARAMS, message));
    };
    let mut body = Map::new();
    body.insert("content".into(), json!([{ "type": "text", "text": text }]));
    body.insert("isError".into(), false.into());
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to `run` and returns the response lines, parsed.
    fn serve(input: &str) -> Vec<Value> {
        let mut output = Vec::new();
        run(input.as_bytes(), &mut output).expect("in-memory I/O cannot fail");
        let text = String::from_utf8(output).expect("output is UTF-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "every response ends its line"
        );
        text.lines()
            .map(|line| serde_json::from_str(line).expect("output is JSON"))
            .collect()
    }

    /// The single response to one line.
    fn serve_one(line: &str) -> Value {
        let responses = serve(&format!("{line}\n"));
        assert_eq!(responses.len(), 1, "one response to {line}");
        responses.into_iter().next().unwrap_or_default()
    }

    fn modern(id: u64, method: &str, extra: Value) -> String {
        let mut params = json!({
            "_meta": {
                PROTOCOL_VERSION_KEY: "2026-07-28",
                "io.modelcontextprotocol/clientInfo": { "name": "test", "version": "0" },
                CLIENT_CAPABILITIES_KEY: {}
            }
        });
        if let (Some(params), Value::Object(extra)) = (params.as_object_mut(), extra) {
            params.extend(extra);
        }
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
    }

    fn legacy(id: u64, method: &str, params: Value) -> String {
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
    }

    fn error_code(response: &Value) -> i64 {
        response["error"]["code"].as_i64().unwrap_or_default()
    }

    fn assert_modern_stamp(result: &Value) {
        assert_eq!(result["resultType"], "complete");
        assert_eq!(result["_meta"][SERVER_INFO_KEY]["name"], SERVER_NAME);
        assert_eq!(
            result["_meta"][SERVER_INFO_KEY]["version"],
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn a_batch_gets_one_array_of_its_requests_answers() {
        let batch = format!(
            "[{},{},{}]\n",
            legacy(1, "ping", json!({})),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            legacy(2, "tools/list", json!({}))
        );
        let replies = serve(&batch);
        assert_eq!(replies.len(), 1, "{replies:?}");
        let answers = replies[0].as_array().expect("an array");
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0]["id"], 1);
        assert_eq!(answers[1]["result"]["tools"][0]["name"], "echo");
        // Only notifications: nothing comes back.
        assert!(serve("[{\"jsonrpc\":\"2.0\",\"method\":\"x\"}]\n").is_empty());
    }

    #[test]
    fn discover_answers_without_handshake() {
        let response = serve_one(&modern(1, "server/discover", json!({})));
        assert_eq!(response["jsonrpc"], "2.0");
        assert_eq!(response["id"], 1);
        let result = &response["result"];
        assert_modern_stamp(result);
        assert_eq!(result["supportedVersions"][0], "2026-07-28");
        assert!(
            result["supportedVersions"]
                .as_array()
                .is_some_and(|v| v.len() == 5)
        );
        assert_eq!(result["capabilities"], json!({ "tools": {} }));
        assert_eq!(result["ttlMs"], 0);
        assert_eq!(result["cacheScope"], "public");
    }

    #[test]
    fn discover_without_envelope_is_still_a_discover_result() {
        let response = serve_one(&legacy(2, "server/discover", json!({})));
        assert_modern_stamp(&response["result"]);
        assert_eq!(response["result"]["supportedVersions"][0], "2026-07-28");
    }

    #[test]
    fn initialize_echoes_each_handshake_version() {
        for version in HANDSHAKE_VERSIONS {
            let params = json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": { "name": "test", "version": "0" }
            });
            let response = serve_one(&legacy(7, "initialize", params));
            let expected = json!({
                "protocolVersion": version,
                "capabilities": { "tools": {} },
                "serverInfo": { "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION") }
            });
            assert_eq!(response["result"], expected, "version {version}");
            assert_eq!(response["id"], 7);
        }
    }

    #[test]
    fn initialize_counter_offers_latest_for_unknown_versions() {
        for params in [
            json!({ "protocolVersion": "2099-01-01", "capabilities": {} }),
            json!({ "protocolVersion": "2026-07-28", "capabilities": {} }),
            json!({}),
        ] {
            let response = serve_one(&legacy(1, "initialize", params));
            assert_eq!(
                response["result"]["protocolVersion"],
                LATEST_HANDSHAKE_VERSION
            );
        }
    }

    #[test]
    fn ping_is_empty_in_legacy_and_stamped_in_modern() {
        let response = serve_one(r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#);
        assert_eq!(response["id"], "p");
        assert_eq!(response["result"], json!({}));
        let response = serve_one(&modern(3, "ping", json!({})));
        assert_modern_stamp(&response["result"]);
    }

    #[test]
    fn tools_list_has_the_echo_tool() {
        let response = serve_one(&legacy(4, "tools/list", json!({})));
        let result = &response["result"];
        assert_eq!(
            result.as_object().map(Map::len),
            Some(1),
            "legacy: tools only"
        );
        let tool = &result["tools"][0];
        assert_eq!(tool["name"], "echo");
        assert!(tool["description"].is_string());
        assert_eq!(tool["inputSchema"]["type"], "object");
        assert_eq!(tool["inputSchema"]["properties"]["text"]["type"], "string");
        assert_eq!(tool["inputSchema"]["required"], json!(["text"]));

        let response = serve_one(&modern(5, "tools/list", json!({})));
        assert_modern_stamp(&response["result"]);
        assert_eq!(response["result"]["tools"][0]["name"], "echo");
        assert_eq!(response["result"]["ttlMs"], 0);
        assert_eq!(response["result"]["cacheScope"], "public");
    }

    #[test]
    fn tools_call_echoes_text_in_both_eras() {
        let call = json!({ "name": "echo", "arguments": { "text": "héllo\nworld" } });
        let response = serve_one(&legacy(6, "tools/call", call.clone()));
        let expected = json!({
            "content": [{ "type": "text", "text": "héllo\nworld" }],
            "isError": false
        });
        assert_eq!(response["result"], expected);

        let response = serve_one(&modern(7, "tools/call", call));
        assert_modern_stamp(&response["result"]);
        assert_eq!(response["result"]["content"], expected["content"]);
        assert_eq!(response["result"]["isError"], false);
        assert!(
            response["result"].get("ttlMs").is_none(),
            "tools/call is not cacheable"
        );
    }

    #[test]
    fn tools_call_bad_calls_are_invalid_params() {
        for call in [
            json!({ "name": "nope", "arguments": { "text": "x" } }),
            json!({ "arguments": { "text": "x" } }),
            json!({ "name": "echo" }),
            json!({ "name": "echo", "arguments": {} }),
            json!({ "name": "echo", "arguments": { "text": 42 } }),
            json!({ "name": "echo", "arguments": "text" }),
        ] {
            let response = serve_one(&legacy(8, "tools/call", call.clone()));
            assert_eq!(error_code(&response), INVALID_PARAMS, "{call}");
            assert_eq!(response["id"], 8);
            assert!(response["error"]["message"].is_string());
        }
        let response = serve_one(&legacy(9, "tools/call", json!({ "name": "nope" })));
        let message = response["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("nope") && message.contains("echo"),
            "{message}"
        );
    }

    #[test]
    fn unknown_method_is_method_not_found() {
        let response = serve_one(&legacy(10, "resources/list", json!({})));
        assert_eq!(error_code(&response), METHOD_NOT_FOUND);
        assert_eq!(response["id"], 10);
        let response = serve_one(&modern(11, "prompts/list", json!({})));
        assert_eq!(error_code(&response), METHOD_NOT_FOUND);
    }

    #[test]
    fn bad_json_is_a_parse_error_with_null_id() {
        for line in ["{not json", "{\"jsonrpc\":\"2.0\",\"id\":1,", "\u{0}"] {
            let response = serve_one(line);
            assert_eq!(error_code(&response), PARSE_ERROR, "{line:?}");
            assert_eq!(response["id"], Value::Null);
        }
    }

    #[test]
    fn invalid_utf8_is_a_parse_error_and_serving_goes_on() {
        let mut input = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}\n".to_vec();
        input.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n");
        let mut output = Vec::new();
        assert!(run(&input[..], &mut output).is_ok());
        let responses: Vec<Value> = output
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect();
        assert_eq!(responses.len(), 2);
        assert_eq!(error_code(&responses[0]), PARSE_ERROR);
        assert_eq!(responses[1]["id"], 2);
    }

    #[test]
    fn non_request_shapes_are_invalid_requests() {
        for (line, id) in [
            ("[]", Value::Null),
            ("42", Value::Null),
            (r#"{"id":1,"method":"ping"}"#, json!(1)),
            (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, json!(1)),
            (r#"{"jsonrpc":"2.0","id":1}"#, json!(1)),
            (r#"{"jsonrpc":"2.0","id":"a","method":7}"#, json!("a")),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                Value::Null,
            ),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, Value::Null),
            (r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, Value::Null),
        ] {
            let response = serve_one(line);
            assert_eq!(error_code(&response), INVALID_REQUEST, "{line}");
            assert_eq!(response["id"], id, "{line}");
        }
    }

    #[test]
    fn params_that_are_not_an_object_are_invalid_params() {
        let response = serve_one(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#);
        assert_eq!(error_code(&response), INVALID_PARAMS);
        let response = serve_one(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#);
        assert_eq!(response["result"], json!({}));
    }

    #[test]
    fn notifications_and_responses_get_no_reply() {
        let input = concat!(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"no/such/notification"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":6,"error":{"code":-1,"message":"x"}}"#,
            "\n",
        );
        assert!(serve(input).is_empty());
    }

    #[test]
    fn crlf_empty_lines_and_a_last_line_without_newline() {
        let input = concat!(
            "\n",
            "\r\n",
            "   \n",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            "\r\n",
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#,
        );
        let responses = serve(input);
        assert_eq!(responses.len(), 2);
        assert_eq!(responses[0]["id"], 1);
        assert_eq!(responses[1]["id"], 2);
        assert!(serve("").is_empty());
    }

    #[test]
    fn legacy_session_from_handshake_to_call() {
        let input = [
            legacy(
                0,
                "initialize",
                json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {} }),
            ),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
            legacy(1, "tools/list", json!({})),
            legacy(
                2,
                "tools/call",
                json!({ "name": "echo", "arguments": { "text": "hi" } }),
            ),
        ]
        .join("\n");
        let responses = serve(&input);
        let ids: Vec<&Value> = responses.iter().map(|response| &response["id"]).collect();
        assert_eq!(ids, [&json!(0), &json!(1), &json!(2)]);
        assert_eq!(responses[2]["result"]["content"][0]["text"], "hi");
    }

    #[test]
    fn unsupported_modern_version_is_32022() {
        let line = json!({
            "jsonrpc": "2.0",
            "id": 12,
            "method": "server/discover",
            "params": { "_meta": { PROTOCOL_VERSION_KEY: "1900-01-01", CLIENT_CAPABILITIES_KEY: {} } }
        });
        let response = serve_one(&line.to_string());
        assert_eq!(response["id"], 12);
        assert_eq!(error_code(&response), UNSUPPORTED_PROTOCOL_VERSION);
        let data = &response["error"]["data"];
        assert_eq!(data["requested"], "1900-01-01");
        assert_eq!(data["supported"][0], "2026-07-28");
        assert!(
            data["supported"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("2025-11-25")))
        );
    }

    #[test]
    fn handshake_version_in_the_envelope_is_32022_naming_initialize() {
        let line = json!({
            "jsonrpc": "2.0",
            "id": 13,
            "method": "tools/list",
            "params": { "_meta": { PROTOCOL_VERSION_KEY: "2025-11-25", CLIENT_CAPABILITIES_KEY: {} } }
        });
        let response = serve_one(&line.to_string());
        assert_eq!(error_code(&response), UNSUPPORTED_PROTOCOL_VERSION);
        let message = response["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("initialize"), "{message}");
    }

    #[test]
    fn malformed_modern_envelope_is_invalid_params() {
        for meta in [
            json!({ PROTOCOL_VERSION_KEY: "2026-07-28" }),
            json!({ PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: "none" }),
            json!({ PROTOCOL_VERSION_KEY: 20260728, CLIENT_CAPABILITIES_KEY: {} }),
        ] {
            let line = json!({
                "jsonrpc": "2.0", "id": 14, "method": "tools/list", "params": { "_meta": meta }
            });
            let response = serve_one(&line.to_string());
            assert_eq!(error_code(&response), INVALID_PARAMS, "{meta}");
            assert_eq!(response["id"], 14);
        }
    }

    #[test]
    fn legacy_meta_without_version_stays_legacy() {
        let params = json!({ "_meta": { "progressToken": 1 } });
        let response = serve_one(&legacy(15, "ping", params));
        assert_eq!(response["result"], json!({}));
    }

    #[test]
    fn responses_start_with_jsonrpc_and_keep_string_ids() {
        let mut output = Vec::new();
        let input = r#"{"jsonrpc":"2.0","id":"abc-1","method":"ping"}"#;
        assert!(run(input.as_bytes(), &mut output).is_ok());
        assert_eq!(
            output,
            b"{\"jsonrpc\":\"2.0\",\"id\":\"abc-1\",\"result\":{}}\n"
        );
    }
}
