//! The agent's configuration: defaults, the YAML config file, validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_actions::Policy;
use drover_bus::TopologyConfig;
use drover_core::Dur;
use drover_core::wire::Names;
use serde::Deserialize;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default cap on captured output per stream (stdout, stderr): 256 KiB, so that a result
/// stays well under the NATS default `max_payload` of 1 MiB.
pub const DEFAULT_OUTPUT_CAP: usize = 256 * 1024;
/// Default bound on a drain (SIGTERM): the default step timeout plus a margin.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(330);
/// How long a command may run and still be answered with its result (see
/// [`AgentConfig::result_in_reply`]); well within the controller's 2 s ack timeout.
pub const DEFAULT_RESULT_IN_REPLY: Duration = Duration::from_millis(500);
/// Data directory of an agent run as root.
pub const ROOT_DATA_DIR: &str = "/var/lib/drover/agent";

/// How much of the journal is kept (applied when the agent starts and every
/// [`crate::journal::COMPACT_EVERY`] appended lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished and reported commands older than this are forgotten (a command re-sent
    /// after that would run again). Default 7 days.
    pub max_age: Duration,
    /// At most this many finished and reported commands are kept (oldest forgotten
    /// first). Default 100,000.
    pub max_commands: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(7 * 24 * 3600), max_commands: 100_000 }
    }
}

/// Everything an agent needs to run (the NATS connection is made by the caller).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node id: one NATS subject token (`check_id`): letters, digits, `-`, `_`.
    pub node_id: String,
    /// Labels that plans select on (`role=web`).
    pub labels: BTreeMap<String, String>,
    pub groups: Vec<String>,
    /// Subject / stream / bucket names (prefix `drover` by default).
    pub names: Names,
    /// Where the journal lives (created if missing; one agent per directory).
    pub data_dir: PathBuf,
    /// Heartbeat interval (default 2 s: five beats within the controller's default 10 s
    /// timeout); longer in a fleet past `fleet_beats_per_s` (below).
    pub heartbeat: Duration,
    /// The cap on the whole fleet's heartbeats, in beats per second: in a fleet larger
    /// than `fleet_beats_per_s` x `heartbeat`, the agent beats less often than
    /// `heartbeat` (`drover_core::liveness`). 0: always every `heartbeat`.
    pub fleet_beats_per_s: u32,
    /// Which actions and paths this node allows.
    pub policy: Policy,
    /// Bytes kept per output stream of a step (default 256 KiB).
    pub output_cap: usize,
    /// Upper bound on a drain; running steps are cancelled when it is reached.
    pub drain_timeout: Duration,
    /// A command that finishes within this long is answered with its result
    /// (`ReplyStatus::Done`: one round trip); a longer one is answered `accepted` at this
    /// point and its result published when it ends. Zero: always `accepted` first.
    pub result_in_reply: Duration,
    /// Replicas and retention of the streams and buckets the agent creates if missing.
    pub topology: TopologyConfig,
    /// Journal retention.
    pub retention: Retention,
    /// Only read by `drover agent` (from the config file): where to connect.
    /// [`crate::Agent::start`] ignores it.
    pub nats_url: Option<String>,
}

impl AgentConfig {
    /// A config with defaults: no labels or groups, prefix `drover`, heartbeat 2 s,
    /// default policy (every action but `shell`), 256 KiB output cap, drain bound 5m30s.
    pub fn new(node_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            node_id: node_id.into(),
            labels: BTreeMap::new(),
            groups: Vec::new(),
            names: Names::default(),
            data_dir: data_dir.into(),
            heartbeat: DEFAULT_HEARTBEAT,
            fleet_beats_per_s: drover_core::liveness::DEFAULT_FLEET_BEATS_PER_S,
            policy: Policy::default(),
            output_cap: DEFAULT_OUTPUT_CAP,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            result_in_reply: DEFAULT_RESULT_IN_REPLY,
            topology: TopologyConfig::default(),
            retention: Retention::default(),
            nats_url: None,
        }
    }

    /// Read a YAML config file (see [`AgentFile`]); missing `node_id` and `data_dir`
    /// get their defaults ([`default_node_id`], [`default_data_dir`]).
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        AgentFile::load(path)?.into_config()
    }

    /// Check what [`crate::Agent::start`] would refuse: the node id, labels, groups,
    /// intervals.
    pub fn validate(&self) -> Result<(), ConfigError> {
        drover_core::wire::check_id("node", &self.node_id).map_err(ConfigError::Invalid)?;
        for (k, v) in &self.labels {
            check_label(k, v).map_err(ConfigError::Invalid)?;
        }
        for g in &self.groups {
            if g.is_empty() || !g.bytes().all(is_word) {
                return Err(ConfigError::Invalid(format!(
                    "group \"{g}\" is not valid: use letters, digits, '-', '_', '.', '/' only"
                )));
            }
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::Invalid("heartbeat must be longer than 0".into()));
        }
        if self.output_cap == 0 {
            return Err(ConfigError::Invalid("output_cap must be at least 1 byte".into()));
        }
        Ok(())
    }
}

fn is_word(c: u8) -> bool {
    // What a label selector accepts as a key or value (drover-core's selector grammar).
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/')
}

/// Why a label cannot be selected on.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("label \"{key}={value}\" has an empty key"));
    }
    if let Some(c) = key.bytes().find(|c| !is_word(*c)) {
        return Err(format!(
            "label key \"{key}\" contains '{}': use letters, digits, '-', '_', '.', '/' only",
            c as char
        ));
    }
    if value.is_empty() {
        return Err(format!("label \"{key}\" has an empty value"));
    }
    if let Some(c) = value.bytes().find(|c| !is_word(*c)) {
        return Err(format!(
            "label value \"{key}={value}\" contains '{}': use letters, digits, '-', '_', '.', '/' only",
            c as char
        ));
    }
    Ok(())
}

/// Parse `k=v,k=v` (the `--labels` flag). Errors name the bad pair.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("\"{pair}\" is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        check_label(k, v).map_err(|e| format!("\"{pair}\": {e}"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("\"{pair}\": label \"{k}\" is given twice"));
        }
    }
    Ok(out)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// The default node id: the short host name (up to the first '.').
pub fn default_node_id() -> String {
    let h = hostname();
    h.split('.').next().unwrap_or(&h).to_string()
}

/// The default data directory: [`ROOT_DATA_DIR`] when run as root, else
/// `./.drover/agent-<node_id>`.
pub fn default_data_dir(node_id: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from(ROOT_DATA_DIR)
    } else {
        PathBuf::from(".drover").join(format!("agent-{node_id}"))
    }
}

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A duration written as text (`30s`); a bare number is refused with a hint.
fn human_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Dur>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(serde_json::Number),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(t)) => Dur::parse(&t).map(Some).map_err(serde::de::Error::custom),
        Some(Raw::Number(n)) => {
            Err(serde::de::Error::custom(format!("{n} has no unit; write e.g. \"{n}s\" or \"{n}ms\"")))
        }
    }
}

/// The policy section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Action patterns that may run (default `["*"]`: every action but `shell`).
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    /// Directories `file.*` may touch (default: anywhere).
    pub paths: Option<Vec<PathBuf>>,
}

/// The journal section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalFile {
    #[serde(default, deserialize_with = "human_duration")]
    pub max_age: Option<Dur>,
    pub max_commands: Option<usize>,
}

/// The agent's YAML config file, as written (every field optional).
///
/// ```yaml
/// nats_url: nats://nats.example:4222
/// node_id: web-01            # default: short host name
/// labels: { role: web, env: prod }
/// groups: [web]
/// data_dir: /var/lib/drover/agent
/// prefix: drover
/// heartbeat: 1s
/// fleet_beats_per_s: 500     # the whole fleet's heartbeats at most (0: no cap)
/// drain_timeout: 5m30s
/// output_cap: 262144         # bytes per stream
/// replicas: 1                # of streams/buckets the agent creates if missing
/// policy: { allow: ["*", shell], deny: ["package.*"], paths: [/etc/app] }
/// journal: { max_age: 7d, max_commands: 100000 }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub nats_url: Option<String>,
    pub node_id: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub groups: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub prefix: Option<String>,
    #[serde(default, deserialize_with = "human_duration")]
    pub heartbeat: Option<Dur>,
    pub fleet_beats_per_s: Option<u32>,
    #[serde(default, deserialize_with = "human_duration")]
    pub drain_timeout: Option<Dur>,
    pub output_cap: Option<usize>,
    pub replicas: Option<usize>,
    pub policy: Option<PolicyFile>,
    pub journal: Option<JournalFile>,
}

impl AgentFile {
    /// Read and parse a YAML file. Unknown fields are errors naming the field.
    pub fn load(path: &Path) -> Result<AgentFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        AgentFile::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parse YAML text; the error names the field (`policy.allow[0]: ...`).
    pub fn parse(text: &str) -> Result<AgentFile, String> {
        let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        if doc.is_null() {
            return Ok(AgentFile::default());
        }
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            if path == "." || path.is_empty() {
                e.into_inner().to_string()
            } else {
                format!("field `{path}`: {}", e.into_inner())
            }
        })
    }

    /// Fill in defaults and check the result.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let node_id = self.node_id.unwrap_or_else(default_node_id);
        let data_dir = self.data_dir.unwrap_or_else(|| default_data_dir(&node_id));
        let mut cfg = AgentConfig::new(node_id, data_dir);
        cfg.nats_url = self.nats_url;
        if let Some(l) = self.labels {
            cfg.labels = l;
        }
        if let Some(g) = self.groups {
            cfg.groups = g;
        }
        if let Some(p) = self.prefix {
            if p.is_empty() || p.starts_with('.') || p.ends_with('.') || p.contains(['*', '>', ' ']) {
                return Err(ConfigError::Invalid(format!("prefix \"{p}\" is not a valid subject prefix")));
            }
            cfg.names = Names::new(&p);
        }
        if let Some(h) = self.heartbeat {
            cfg.heartbeat = h.as_std();
        }
        if let Some(r) = self.fleet_beats_per_s {
            cfg.fleet_beats_per_s = r;
        }
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d.as_std();
        }
        if let Some(c) = self.output_cap {
            cfg.output_cap = c;
        }
        if let Some(r) = self.replicas {
            if r == 0 {
                return Err(ConfigError::Invalid("replicas must be at least 1".into()));
            }
            cfg.topology.replicas = r;
        }
        if let Some(p) = self.policy {
            if let Some(a) = p.allow {
                cfg.policy.allow = a;
            }
            if let Some(d) = p.deny {
                cfg.policy.deny = d;
            }
            if let Some(paths) = p.paths {
                if let Some(bad) = paths.iter().find(|p| !p.is_absolute()) {
                    return Err(ConfigError::Invalid(format!(
                        "policy.paths: \"{}\" is not an absolute path",
                        bad.display()
                    )));
                }
                cfg.policy.paths = paths;
            }
        }
        if let Some(j) = self.journal {
            if let Some(a) = j.max_age {
                cfg.retention.max_age = a.as_std();
            }
            if let Some(n) = j.max_commands {
                cfg.retention.max_commands = n;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let f = AgentFile::parse(
            "node_id: web-01\nlabels: {role: web}\ngroups: [web]\ndata_dir: /tmp/x\nheartbeat: 2s\n\
             fleet_beats_per_s: 100\npolicy: {allow: ['*', shell], paths: [/etc/app]}\noutput_cap: 1000\nprefix: acme\n\
             journal: {max_age: 1d, max_commands: 10}\n",
        )
        .unwrap();
        let c = f.into_config().unwrap();
        assert_eq!(c.node_id, "web-01");
        assert_eq!(c.labels["role"], "web");
        assert_eq!(c.heartbeat, Duration::from_secs(2));
        assert_eq!(c.fleet_beats_per_s, 100);
        assert_eq!(c.policy.allow, vec!["*".to_string(), "shell".to_string()]);
        assert_eq!(c.policy.deny, Vec::<String>::new());
        assert_eq!(c.names.command("web-01"), "acme.cmd.web-01");
        assert_eq!(c.retention.max_commands, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let e = AgentFile::parse("node_id: a\nlabelz: {}\n").unwrap_err();
        assert!(e.contains("labelz"), "{e}");
        let e = AgentFile::parse("policy: {alow: []}\n").unwrap_err();
        assert!(e.contains("policy") && e.contains("alow"), "{e}");
        let e = AgentFile::parse("heartbeat: 5\n").unwrap_err();
        assert!(e.contains("heartbeat") && e.contains("no unit"), "{e}");
        let e = AgentFile::parse("heartbeat: 5x\n").unwrap_err();
        assert!(e.contains("heartbeat") && e.contains("not a duration"), "{e}");
        let e = AgentFile::parse("fleet_beats_per_s: -1\n").unwrap_err();
        assert!(e.contains("fleet_beats_per_s"), "{e}");
        let e = AgentFile::parse("node_id: a\n labels: [\n").unwrap_err();
        assert!(e.contains("YAML"), "{e}");
        let e = AgentFile::parse("node_id: a.b\n").unwrap().into_config().unwrap_err().to_string();
        assert!(e.contains("contains '.'"), "{e}");
        let e = AgentFile::parse("node_id: a\nlabels: {role: 'a b'}\n").unwrap().into_config().unwrap_err();
        assert!(e.to_string().contains("a b"), "{e}");
    }

    #[test]
    fn labels_flag() {
        let l = parse_labels("role=web, zone=a").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_labels("role").unwrap_err().contains("\"role\" is not key=value"));
        assert!(parse_labels("role=a b").unwrap_err().contains("role=a b"));
        assert!(parse_labels("a=1,a=2").unwrap_err().contains("twice"));
        assert!(parse_labels("").unwrap().is_empty());
    }
}
