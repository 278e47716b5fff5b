//! The admin endpoint's routes and handlers.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::Service;

use super::Snapshot;
use crate::backend::BoxFuture;
use crate::protocol::{CodeTable, Codec, DeviceGroup, DeviceParser, Kind};
use crate::server::{BindError, Server};
use crate::session::{KickReason, Transport};

/// Largest request body read, in bytes.
const MAX_BODY: usize = 16 * 1024;

/// The console page; `/*BOOT*/null` is replaced by the facts it needs (code table, ports).
const CONSOLE: &str = include_str!("console.html");

type Body = Full<Bytes>;

/// Routes admin requests to their handlers.
#[derive(Debug, Clone)]
pub(super) struct Api {
    server: Server,
}

impl Api {
    pub(super) fn new(server: Server) -> Self {
        Api { server }
    }
}

impl Service<Request<Incoming>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move { Ok(route(&server, request).await) })
    }
}

async fn route(server: &Server, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();

    let allowed: &[Method] = match segments.as_slice() {
        [""] | ["health"] | ["ready"] | ["metrics"] => &[Method::GET],
        ["admin", "stats"] | ["admin", "ports"] | ["admin", "users", _] => &[Method::GET],
        ["admin", "ports", _] => &[Method::POST, Method::DELETE],
        ["admin", "kick"] => &[Method::POST],
        _ => return json_error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    };
    if !allowed.contains(&method) {
        return method_not_allowed(allowed);
    }

    match (method, segments.as_slice()) {
        (_, [""]) => console(server),
        (_, ["health"]) => json_response(StatusCode::OK, &json!({"status": "alive"})),
        (_, ["ready"]) => ready(server),
        (_, ["metrics"]) => metrics(server),
        (_, ["admin", "stats"]) => json_response(StatusCode::OK, &stats(server)),
        (_, ["admin", "ports"]) => json_response(StatusCode::OK, &ports(server)),
        (Method::POST, ["admin", "ports", port]) => bind_port(server, port, request).await,
        (_, ["admin", "ports", port]) => close_port(server, port),
        (_, ["admin", "kick"]) => kick(server, request).await,
        (_, ["admin", "users", id]) => user(server, id),
        _ => json_error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

fn console(server: &Server) -> Response<Body> {
    let config = &server.node().config;
    let table = CodeTable::new(config.netty.config.code_table);
    let codes: serde_json::Map<String, Value> = Kind::ALL
        .iter()
        .map(|k| (k.snake_name().to_owned(), table.code(*k).into()))
        .collect();
    let ws_ports: Vec<u16> = server
        .ports()
        .iter()
        .filter(|p| p.transport == Transport::WebSocket)
        .map(|p| p.addr.port())
        .collect();
    let boot = json!({
        "codes": codes,
        "wsPath": config.netty.config.websocket.path,
        "wsPorts": ws_ports,
        "tokenRequired": config.admin.token.is_some(),
    });
    // `</` cannot appear in JSON text we build, but escape it anyway: the value sits in a
    // script element.
    let boot = boot.to_string().replace("</", "<\\/");
    let page = CONSOLE.replace("/*BOOT*/null", &boot);

    let mut response = Response::new(Full::from(page));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().expect("valid"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            .parse()
            .expect("valid"),
    );
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    response
}

fn ready(server: &Server) -> Response<Body> {
    let report = server.readiness();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": report.ready,
        "notReady": report.not_ready(),
        "checks": report.checks,
    });
    json_response(status, &body)
}

fn metrics(server: &Server) -> Response<Body> {
    let node = server.node();
    let mut sessions = [[0usize; 2]; 2];
    for conn in node.sessions.all_connections() {
        let t = usize::from(conn.info().transport == Transport::Tcp);
        let c = usize::from(conn.codec() == Codec::Proto);
        sessions[t][c] += 1;
    }
    let mut by_kind = Vec::with_capacity(4);
    for (t, transport) in [Transport::WebSocket, Transport::Tcp]
        .into_iter()
        .enumerate()
    {
        for (c, codec) in [Codec::Json, Codec::Proto].into_iter().enumerate() {
            by_kind.push((transport, codec, sessions[t][c]));
        }
    }
    let snapshot = Snapshot {
        sessions: by_kind,
        open: server
            .ports()
            .iter()
            .map(|p| (p.transport, p.connections))
            .collect(),
        online_users: node.sessions.online_users(),
        deliveries: node.delivery.delivered_total(),
        duplicates: node.delivery.duplicates_total(),
        backends: vec![
            ("broker", node.broker.health()),
            ("routes", node.routes.health()),
            ("registry", node.registry.health()),
        ],
    };

    let mut response = Response::new(Full::from(node.metrics.render(&snapshot)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("valid"),
    );
    response
}

fn stats(server: &Server) -> Value {
    let node = server.node();
    let ports = server.ports();
    json!({
        "connections": ports.iter().map(|p| p.connections).sum::<usize>(),
        "sessions": node.sessions.connection_count(),
        "users": node.sessions.online_users(),
        "upstream": node.metrics.publishes(),
        "downstream": node.delivery.delivered_total(),
        "ports": ports.len(),
        "ready": server.readiness().ready,
    })
}

fn ports(server: &Server) -> Value {
    let ports: Vec<Value> = server
        .ports()
        .iter()
        .map(|p| {
            json!({
                "transport": p.transport.as_str(),
                "addr": p.addr.to_string(),
                "port": p.addr.port(),
                "connections": p.connections,
            })
        })
        .collect();
    json!({ "ports": ports })
}

/// What `POST /admin/ports/{port}` may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    transport: Option<String>,
    host: Option<String>,
}

async fn bind_port(server: &Server, port: &str, request: Request<Incoming>) -> Response<Body> {
    let Some(port) = parse_port(port) else {
        return bad_port(port);
    };
    let query_transport = query_param(request.uri().query(), "transport");
    let body: BindBody = match read_json(request).await {
        Ok(body) => body.unwrap_or_default(),
        Err(response) => return response,
    };
    let Some(name) = body.transport.or(query_transport) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "say which transport: {\"transport\": \"ws\"} or {\"transport\": \"tcp\"}",
        );
    };
    let transport = match name.to_ascii_lowercase().as_str() {
        "ws" | "websocket" => Transport::WebSocket,
        "tcp" => Transport::Tcp,
        _ => {
            let message = format!("unknown transport `{name}`: use `ws` or `tcp`");
            return json_error(StatusCode::BAD_REQUEST, message);
        }
    };
    let host = body
        .host
        .unwrap_or_else(|| server.node().config.netty.config.host.clone());

    match server.bind(transport, &host, port).await {
        // Binding and closing wake the server's discovery follower, which re-publishes.
        Ok(addr) => {
            let body = json!({
                "transport": transport.as_str(),
                "addr": addr.to_string(),
                "port": addr.port(),
            });
            json_response(StatusCode::CREATED, &body)
        }
        Err(error) => {
            let status = match error.downcast_ref::<BindError>().map(|e| e.source.kind()) {
                Some(ErrorKind::AddrInUse) => StatusCode::CONFLICT,
                Some(ErrorKind::PermissionDenied) => StatusCode::FORBIDDEN,
                Some(ErrorKind::Other | ErrorKind::Unsupported) | None => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                // Unresolvable or foreign host names.
                Some(_) => StatusCode::BAD_REQUEST,
            };
            json_error(status, error.to_string())
        }
    }
}

fn close_port(server: &Server, port: &str) -> Response<Body> {
    let Some(port) = parse_port(port) else {
        return bad_port(port);
    };
    let draining: usize = server
        .ports()
        .iter()
        .filter(|p| p.addr.port() == port)
        .map(|p| p.connections)
        .sum();
    if port == 0 || !server.close_port(port) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("nothing is bound on port {port}"),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({"port": port, "closed": true, "draining": draining}),
    )
}

/// What `POST /admin/kick` carries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KickBody {
    user: String,
    group: Option<String>,
    device_type: Option<String>,
}

async fn kick(server: &Server, request: Request<Incoming>) -> Response<Body> {
    let body: KickBody = match read_json(request).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "a JSON body is required: {\"user\": \"...\", \"group\": \"MOBILE\"}",
            )
        }
        Err(response) => return response,
    };
    if body.user.trim().is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "`user` must not be empty");
    }
    let node = server.node();
    let group = match (&body.group, &body.device_type) {
        (Some(name), _) => match DeviceGroup::parse(name) {
            Some(group) => Some(group),
            None => {
                let message = format!("unknown group `{name}`: use MOBILE, DESKTOP or WEB");
                return json_error(StatusCode::BAD_REQUEST, message);
            }
        },
        (None, Some(device)) => {
            let devices = DeviceParser::new(&node.config.netty.config.device_aliases);
            Some(devices.parse(Some(device)).group())
        }
        (None, None) => None,
    };

    let kicked = node.sessions.take(&body.user, group);
    if kicked.is_empty() {
        let message = format!("user `{}` has no matching connection here", body.user);
        return json_error(StatusCode::NOT_FOUND, message);
    }
    for conn in &kicked {
        conn.kick(KickReason::Admin);
    }
    tracing::info!(user.id = %body.user, kicked = kicked.len(), "kicked by an administrator");
    json_response(
        StatusCode::OK,
        &json!({"user": body.user, "kicked": kicked.len()}),
    )
}

fn user(server: &Server, id: &str) -> Response<Body> {
    let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
    let connections = server.node().sessions.connections(&id);
    if connections.is_empty() {
        let message = format!("user `{id}` has no connection on this node");
        return json_error(StatusCode::NOT_FOUND, message);
    }
    let list: Vec<Value> = connections
        .iter()
        .map(|(group, conn)| {
            let info = conn.info();
            json!({
                "id": conn.id(),
                "transport": info.transport.as_str(),
                "codec": match conn.codec() { Codec::Json => "json", Codec::Proto => "proto" },
                "group": group.as_str(),
                "deviceType": conn.bound().map(|(_, d)| d.as_str()),
                "peer": info.peer.to_string(),
                "port": info.local_port,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"user": id, "connections": list}))
}

fn parse_port(text: &str) -> Option<u16> {
    // `u16::from_str` accepts a leading `+`; a port is digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn bad_port(text: &str) -> Response<Body> {
    let message = format!("`{text}` is not a port: use a number from 0 to 65535");
    json_error(StatusCode::BAD_REQUEST, message)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        (key == name).then(|| value.into_owned())
    })
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes; `None` when the body is empty.
async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<Option<T>, Response<Body>> {
    let bytes = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let message = format!("cannot read the body (at most {MAX_BODY} bytes): {error}");
            return Err(json_error(StatusCode::BAD_REQUEST, message));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    response
}

/// An error answer: `{"error": message, "status": code}`.
pub(super) fn json_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = json!({"error": message.into(), "status": status.as_u16()});
    json_response(status, &body)
}

fn method_not_allowed(allowed: &[Method]) -> Response<Body> {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let list = list.join(", ");
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {list}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, list.parse().expect("valid"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_plain_numbers() {
        assert_eq!(parse_port("9000"), Some(9000));
        assert_eq!(parse_port("0"), Some(0));
        assert_eq!(parse_port("+1"), None);
        assert_eq!(parse_port("65536"), None);
        assert_eq!(parse_port("abc"), None);
        assert_eq!(parse_port(""), None);
    }

    #[test]
    fn reads_query_parameters() {
        assert_eq!(
            query_param(Some("a=1&transport=tcp"), "transport").as_deref(),
            Some("tcp")
        );
        assert_eq!(
            query_param(Some("transport"), "transport").as_deref(),
            Some("")
        );
        assert_eq!(query_param(None, "transport"), None);
    }
}
