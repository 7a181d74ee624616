//! MCP over HTTP: Streamable HTTP at `/mcp` and the older HTTP+SSE
//! transport at `/sse` and `/messages`, for `serve --http`.
//!
//! No framework and no runtime: `request` reads requests with `httparse`,
//! `response` writes answers and events, `conn` holds one connection,
//! `session` routes one session's messages to its streams, `stateless`
//! serves the 2026-07-28 era with a child per principal, `security`
//! holds the Origin, token and session-id rules, `node` the node id that
//! leads every session id (scale-out), and `frontend` drives it
//! all from the acceptor's `mio` loop. Each session's messages reach its
//! worker thread and leave it through crossbeam channels, as the engine's
//! channel client (`session::client`) defines.

pub mod conn;
pub mod frontend;
pub mod node;
pub mod request;
pub mod response;
pub mod security;
pub mod session;
pub mod stateless;
