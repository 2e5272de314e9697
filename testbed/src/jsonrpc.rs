//! The few JSON-RPC 2.0 shapes MCP needs.

use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// The testbed's ACL refused the call.
pub const ACCESS_DENIED: i64 = -32001;
/// Authentication missing or invalid (sent with HTTP 401).
pub const UNAUTHORIZED: i64 = -32002;
/// The backend did not answer within the proxy's call timeout, or (with HTTP 504) the
/// whole request outlived the proxy's request timeout.
pub const REQUEST_TIMEOUT: i64 = -32003;
/// The backend the tool belongs to could not be connected.
pub const CONNECT_FAILED: i64 = -32004;
/// A backend tool failed with a JSON-RPC error.
pub const BACKEND_ERROR: i64 = -32000;

pub const PROTOCOL_VERSION: &str = "2025-06-18";

pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub fn notification(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": method})
}

/// The text of a `tools/call` result.
pub fn text_result(text: &str, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}
