//! A scanner for secret material in captured output (logs, error messages,
//! `--json` documents).
//!
//! ```text
//!   known secrets ──► needles: raw bytes, base64 (standard / URL-safe, with and
//!   (keys, tokens,             without padding, at every byte alignment), hex,
//!    data keys, KEKs,          and every 20-character window of each base64
//!    PEM keys → DER)           form, 32-character window of each hex form
//!                                  │
//!   captured text ─────────────────┴──► findings (label, form, where)
//!         └── plus generic markers: `PRIVATE KEY-----`
//! ```
//!
//! A window match means a fragment of at least 15 secret bytes appeared: a log
//! that printed half a key, or a key inside a longer base64 blob, is caught too.

use std::collections::HashMap;

use base64::Engine;

/// Shortest base64 fragment that counts (15 bytes of secret).
pub const B64_WINDOW: usize = 20;
/// Shortest hex fragment that counts (16 bytes of secret).
pub const HEX_WINDOW: usize = 32;
/// Shortest raw fragment that counts.
pub const RAW_WINDOW: usize = 16;

/// Markers that never belong in output, whatever the key.
pub const MARKERS: &[&str] = &[
    "PRIVATE KEY-----",
    "BEGIN OPENSSH PRIVATE KEY",
    "BEGIN EC PRIVATE",
    "BEGIN RSA PRIVATE",
];

/// One piece of secret material found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which secret (the label given to [`Scanner::add`]), or `marker`.
    pub secret: String,
    /// How it appeared: `raw`, `base64`, `hex`, `marker`.
    pub form: &'static str,
    /// Where: the source's name and the line number.
    pub location: String,
    /// The line, with the match replaced by `[…]` so reports leak nothing.
    pub context: String,
}

/// Known secrets and the needles derived from them.
#[derive(Default)]
pub struct Scanner {
    /// Window → (secret label, form), per window length.
    windows: HashMap<usize, HashMap<Vec<u8>, (String, &'static str)>>,
    /// Windows of public material, never findings.
    public: std::collections::HashSet<Vec<u8>>,
    /// How many secrets were added.
    count: usize,
}

fn b64_forms(bytes: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut out = Vec::new();
    // Every alignment: the secret may sit at any offset of a larger encoded blob.
    for skip in 0..3.min(bytes.len()) {
        let b = &bytes[skip..];
        for e in [&STANDARD, &URL_SAFE] {
            out.push(e.encode(b));
        }
    }
    out
}

impl Scanner {
    /// An empty scanner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Secrets added so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn insert(&mut self, window: usize, needle: &[u8], label: &str, form: &'static str) {
        if needle.len() < window {
            // Short secrets are matched whole.
            self.windows
                .entry(needle.len())
                .or_default()
                .insert(needle.to_vec(), (label.to_string(), form));
            return;
        }
        let map = self.windows.entry(window).or_default();
        for w in needle.windows(window) {
            map.insert(w.to_vec(), (label.to_string(), form));
        }
    }

    /// Needles derived from `bytes`: (window length, needle, form).
    fn needles(bytes: &[u8]) -> Vec<(usize, Vec<u8>, &'static str)> {
        let mut out = vec![(RAW_WINDOW, bytes.to_vec(), "raw")];
        for s in b64_forms(bytes) {
            out.push((
                B64_WINDOW,
                s.trim_end_matches('=').as_bytes().to_vec(),
                "base64",
            ));
        }
        for h in [hex::encode(bytes), hex::encode_upper(bytes)] {
            out.push((HEX_WINDOW, h.into_bytes(), "hex"));
        }
        out
    }

    /// Adds secret bytes under a label (a key, a token, a KEK...). Secrets
    /// shorter than 8 bytes are refused: they would match by chance.
    pub fn add(&mut self, label: &str, secret: &[u8]) {
        assert!(
            secret.len() >= 8,
            "secret `{label}` is too short to scan for ({} bytes)",
            secret.len()
        );
        self.count += 1;
        for (window, needle, form) in Self::needles(secret) {
            self.insert(window, &needle, label, form);
        }
    }

    /// Adds a PEM private key: its text, each base64 line of its body, and
    /// the DER it encodes (raw, base64, hex).
    pub fn add_pem(&mut self, label: &str, pem: &str) {
        self.add(label, pem.trim().as_bytes());
        if let Some(der) = pem_der(pem) {
            self.add(&format!("{label} (DER)"), &der);
        }
    }

    /// Declares public material (a certificate, a CA bundle): fragments it
    /// shares with a secret (a key's algorithm identifiers and public half)
    /// are not findings.
    pub fn add_public(&mut self, public: &[u8]) {
        let mut forms = vec![public.to_vec()];
        if let Some(der) = std::str::from_utf8(public).ok().and_then(pem_der) {
            forms.push(der);
        }
        for bytes in forms {
            for (window, needle, _) in Self::needles(&bytes) {
                if needle.len() >= window {
                    self.public
                        .extend(needle.windows(window).map(<[u8]>::to_vec));
                }
            }
        }
    }

    /// Everything secret in `text` (named `source` in the findings).
    pub fn scan(&self, source: &str, text: &[u8]) -> Vec<Finding> {
        let mut found = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let location = format!("{source}:{}", n + 1);
            for m in MARKERS {
                if let Some(at) = find(line, m.as_bytes()) {
                    found.push(Finding {
                        secret: "marker".into(),
                        form: "marker",
                        location: location.clone(),
                        context: redact(line, at, m.len()),
                    });
                }
            }
            'line: for (&len, map) in &self.windows {
                if line.len() < len {
                    continue;
                }
                for (at, w) in line.windows(len).enumerate() {
                    if let Some((label, form)) = map.get(w)
                        && !self.public.contains(w)
                    {
                        found.push(Finding {
                            secret: label.clone(),
                            form,
                            location: location.clone(),
                            context: redact(line, at, len),
                        });
                        continue 'line;
                    }
                }
            }
        }
        found
    }
}

/// The DER inside a PEM block (the first one), if any.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok()
        .filter(|d| !d.is_empty())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn redact(line: &[u8], at: usize, len: usize) -> String {
    let start = at.saturating_sub(40);
    let end = (at + len + 40).min(line.len());
    format!(
        "{}[…]{}",
        String::from_utf8_lossy(&line[start..at]),
        String::from_utf8_lossy(&line[at + len..end])
    )
}

/// Fails with every finding listed (redacted) when any text holds a secret.
pub fn assert_clean(scanner: &Scanner, texts: &[(String, Vec<u8>)]) {
    let mut all = Vec::new();
    for (name, text) in texts {
        all.extend(scanner.scan(name, text));
    }
    assert!(
        all.is_empty(),
        "secret material in output ({} findings):\n{}",
        all.len(),
        all.iter()
            .take(40)
            .map(|f| format!("  {} [{} {}]: {}", f.location, f.secret, f.form, f.context))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_secret_in_every_form_and_nothing_in_clean_text() {
        let key: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let mut s = Scanner::new();
        s.add("kek", &key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        let mut shifted = vec![0xffu8];
        shifted.extend_from_slice(&key);
        shifted.push(0);
        let in_blob = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&shifted);
        let cases = [
            format!("DEBUG loaded key {b64} from file"),
            format!("key={}", hex::encode(&key)),
            format!("key={}", hex::encode_upper(&key)),
            format!("blob {in_blob} end"),
            format!("half a key: {}", &b64[10..34]),
            "-----BEGIN PRIVATE KEY-----".to_string(),
        ];
        for c in &cases {
            assert!(!s.scan("t", c.as_bytes()).is_empty(), "missed: {c}");
        }
        let mut raw = b"prefix ".to_vec();
        raw.extend_from_slice(&key);
        assert!(!s.scan("t", &raw).is_empty(), "missed the raw bytes");
        let clean = "INFO rotated cert/dev/web version 3 fingerprint 9f86d081884c7d65 at 2026-11-25T10:00:00Z";
        assert!(s.scan("t", clean.as_bytes()).is_empty());
        // Findings never echo the secret itself.
        let f = s.scan("t", cases[0].as_bytes());
        assert!(!f[0].context.contains(&b64[..20]), "{f:?}");
    }
}
