//! `http.check`: a health probe. A small HTTP/1.1 client over a TCP stream,
//! `http://` only (https is not supported yet), GET, `Connection: close`,
//! Content-Length and chunked bodies, body read up to 1 MiB.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::schema::{HumanDuration, Typed};
use crate::{ActionError, ExecContext, ExecResult, ExecStatus, ParamError};

/// At most this much of a response (headers + body) is read.
const MAX_RESPONSE: usize = 1024 * 1024 + 64 * 1024;

pub struct Check;

/// Params of `http.check`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    /// URL to GET, `http://host[:port]/path`. `https://` is not supported yet.
    pub url: String,
    /// Expected HTTP status code.
    #[serde(default = "default_status")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// Text the response body must contain.
    pub body_contains: Option<String>,
    /// Limit for one try (connect, send, read the response).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Tries after a failed one.
    #[serde(default)]
    pub retries: u32,
    /// Wait between tries.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer <token>`.
    #[schemars(extend("x-drover-secret" = true))]
    pub bearer_token: Option<String>,
}

fn default_status() -> u16 {
    200
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

pub fn parse_url(url: &str) -> Result<Url, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err("https is not supported yet; use an http:// URL".into());
    } else {
        return Err("must start with http://".into());
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let target = target.split('#').next().unwrap_or("/").to_string();
    if authority.contains('@') {
        return Err("user info in the URL is not supported; use `headers`".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed `[` in host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?,
            None if after.is_empty() => 80,
            None => return Err(format!("unexpected `{after}` after host")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace in path".into());
    }
    Ok(Url { host, port, target })
}

/// A response: status code and (decoded) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse a raw response (headers + body as read until close or length).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = find(raw, b"\r\n\r\n").ok_or("incomplete response headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP response: `{status_line}`"));
    }
    let status =
        parts.next().and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, reason, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(out); // truncated: keep what we have
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size `{size_hex}`"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let take = size.min(data.len());
        out.extend_from_slice(&data[..take]);
        if take < size || data.len() < size + 2 {
            return Ok(out);
        }
        data = &data[size + 2..];
    }
}

/// Whether the response is complete (so we can stop reading before close).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    for l in head.split("\r\n") {
        if let Some(v) = l.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            return find(body, b"\r\n0\r\n").is_some() || body.starts_with(b"0\r\n");
        }
    }
    false
}

async fn get_once(url: &Url, p: &CheckParams) -> Result<Response, String> {
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", url.host, url.port))?;
    let host_header = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else if url.port == 80 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: drover/{}\r\nAccept: */*\r\nConnection: close\r\n",
        url.target,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in &p.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(t) = &p.bearer_token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() >= MAX_RESPONSE || complete(&raw) {
            break;
        }
    }
    parse_response(&raw)
}

impl Typed for Check {
    type Params = CheckParams;
    const NAME: &'static str = "http.check";
    const DESCRIPTION: &'static str =
        "GET an http:// URL and check the status code and body (a health probe), with retries.";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    fn check(p: &CheckParams) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if let Err(e) = parse_url(&p.url) {
            errs.push(ParamError::new("url", e));
        }
        for (k, v) in &p.headers {
            let bad_name =
                k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "-_!#$%&'*+.^`|~".contains(c));
            if bad_name || v.contains(['\r', '\n']) {
                errs.push(ParamError::new(format!("headers.{k}"), "not a valid header"));
            }
        }
        if p.bearer_token.as_ref().is_some_and(|t| t.contains(['\r', '\n'])) {
            errs.push(ParamError::new("bearer_token", "must be one line"));
        }
        errs
    }

    async fn execute(&self, p: CheckParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let url = parse_url(&p.url).map_err(|e| ActionError::Failed(format!("url: {e}")))?;
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(false)
                .with_stdout(format!("would GET {} and expect {}\n", p.url, p.expect_status)));
        }
        let tries = p.retries.saturating_add(1);
        let mut log = String::new();
        let mut last_error = String::new();
        let mut last_status: Option<u16> = None;
        for attempt in 1..=tries {
            if attempt > 1 {
                tokio::select! {
                    _ = tokio::time::sleep(p.interval.0) => {}
                    _ = ctx.cancel.cancelled() => break,
                }
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                r = tokio::time::timeout(p.timeout.0, get_once(&url, &p)) => r,
                _ = ctx.cancel.cancelled() => break,
            };
            let ms = started.elapsed().as_millis();
            let verdict = match outcome {
                Err(_) => Err(format!("no response within {}", humantime::format_duration(p.timeout.0))),
                Ok(Err(e)) => Err(e),
                Ok(Ok(resp)) => {
                    last_status = Some(resp.status);
                    if resp.status != p.expect_status {
                        Err(format!("status {} {}, expected {}", resp.status, resp.reason, p.expect_status))
                    } else if let Some(needle) = &p.body_contains
                        && !String::from_utf8_lossy(&resp.body).contains(needle.as_str())
                    {
                        Err(format!(
                            "status {} but the body ({} bytes) does not contain `{needle}`",
                            resp.status,
                            resp.body.len()
                        ))
                    } else {
                        Ok(format!("status {} {}", resp.status, resp.reason))
                    }
                }
            };
            match verdict {
                Ok(msg) => {
                    log.push_str(&format!("try {attempt}/{tries}: {msg} ({ms} ms)\n"));
                    return Ok(ExecResult::succeeded(false)
                        .with_stdout(log)
                        .with_metadata(json!({ "status": last_status, "tries": attempt })));
                }
                Err(e) => {
                    log.push_str(&format!("try {attempt}/{tries}: {e} ({ms} ms)\n"));
                    last_error = e;
                }
            }
        }
        let mut r = if ctx.cancel.is_cancelled() {
            let mut r = ExecResult::new(ExecStatus::Cancelled, false);
            r.error = Some("cancelled".into());
            r
        } else {
            ExecResult::failed(format!("{} failed: {last_error}", p.url))
        };
        r.stdout = log;
        r.metadata = json!({ "status": last_status });
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health?x=1").unwrap(),
            Url { host: "127.0.0.1".into(), port: 8080, target: "/health?x=1".into() }
        );
        assert_eq!(parse_url("http://example").unwrap(), Url { host: "example".into(), port: 80, target: "/".into() });
        assert_eq!(parse_url("http://[::1]:81?q").unwrap(), Url { host: "::1".into(), port: 81, target: "/?q".into() });
        assert!(parse_url("https://x").unwrap_err().contains("https is not supported"));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://x:99999/").is_err());
        assert!(parse_url("http://u:p@x/").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n3\r\n!!!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"busy!!!"[..]));
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
