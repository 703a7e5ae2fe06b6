//! Server-Sent Events framing (`id:`, `event:`, `data:`, comments, blank line = dispatch).
//! Hand-written: the controller's stream uses three fields, and this is shorter than a
//! dependency (eventsource-stream would also need reqwest's `stream` feature).

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `message` when the server named none.
    pub event: String,
    pub data: String,
}

/// An incremental parser: feed it bytes as they arrive, get whole events back.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Add bytes; return the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(e) = self.line(&String::from_utf8_lossy(&line)) {
                out.push(e);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            // Per the spec, an event without data is not dispatched; `id` persists.
            return data.map(|data| SseEvent {
                id: self.id.clone(),
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {} // `retry` and unknown fields are ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere() {
        let text = ": keep-alive\n\nid: 1\nevent: progress\ndata: {\"a\":1}\n\r\nid: 2\r\nevent: end\r\ndata: {\"status\":\"succeeded\"}\r\n\r\n";
        for cut in 0..text.len() {
            let mut p = SseParser::new();
            let mut evs = p.feed(&text.as_bytes()[..cut]);
            evs.extend(p.feed(&text.as_bytes()[cut..]));
            assert_eq!(evs.len(), 2, "cut at {cut}");
            assert_eq!(evs[0], SseEvent { id: Some("1".into()), event: "progress".into(), data: "{\"a\":1}".into() });
            assert_eq!(evs[1].event, "end");
            assert_eq!(evs[1].id.as_deref(), Some("2"));
        }
    }

    #[test]
    fn multi_line_data_and_defaults() {
        let mut p = SseParser::new();
        let evs = p.feed(b"data: a\ndata:b\nretry: 10\n\nevent: x\n\n");
        assert_eq!(evs, vec![SseEvent { id: None, event: "message".into(), data: "a\nb".into() }]);
        // An incomplete event is held back.
        assert!(p.feed(b"data: c").is_empty());
        assert_eq!(p.feed(b"\n\n")[0].data, "c");
    }
}
