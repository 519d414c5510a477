//! CRI's streaming server, as a client: Exec and Attach answer with a URL on
//! containerd's streaming server, and the client upgrades a request to it to a
//! websocket with the `v4.channel.k8s.io` protocol (what `kubectl exec` spoke
//! before v5). Every message is binary; its first byte is the channel:
//!
//! | channel | direction | what |
//! |---|---|---|
//! | 0 | to the server | stdin |
//! | 1 | from the server | stdout (and stderr with a tty) |
//! | 2 | from the server | stderr |
//! | 3 | from the server | the end: a `metav1.Status` JSON |
//! | 4 | to the server | terminal resize: `{"Width":W,"Height":H}` |
//!
//! The v4 protocol cannot half-close stdin: a command that waits for end of
//! input never gets it, so the scenarios end their commands with in-band input.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{CriError, Result};

/// The subprotocol the client asks for.
pub const PROTOCOL: &str = "v4.channel.k8s.io";
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// What a stream has delivered so far.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status message, once it came.
    pub status: Option<Value>,
    /// The server closed the connection.
    pub closed: bool,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The exit code the status reports: 0 for `Success`, the `ExitCode` cause
    /// for `NonZeroExitCode`; `None` without a status or for another failure.
    pub fn exit_code(&self) -> Option<i32> {
        exit_code(self.status.as_ref()?)
    }
}

/// The exit code in a streaming status message.
pub fn exit_code(status: &Value) -> Option<i32> {
    match status["status"].as_str()? {
        "Success" => Some(0),
        _ if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// The `ws://` form of the `http://host:port/path` URL CRI answered with, and
/// the `host:port` to connect to.
pub fn websocket_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| CriError::Stream(format!("not an http:// URL: {url:?}")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || !authority.contains(':') {
        return Err(CriError::Stream(format!("no host:port in {url:?}")));
    }
    Ok((format!("ws://{rest}"), authority.to_string()))
}

/// A websocket connection to CRI's streaming server.
pub struct Stream {
    ws: WebSocketStream<TcpStream>,
    out: Output,
}

impl Stream {
    /// Connects to the URL an Exec or Attach call answered with.
    pub async fn connect(url: &str) -> Result<Self> {
        let (ws_url, authority) = websocket_url(url)?;
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| CriError::Stream(format!("connecting to {authority}: {e}")))?;
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| CriError::Stream(format!("{ws_url}: {e}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| CriError::Stream(format!("websocket upgrade at {ws_url}: {e}")))?;
        let proto = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if proto != Some(PROTOCOL) {
            return Err(CriError::Stream(format!(
                "the server chose protocol {proto:?}, not {PROTOCOL}"
            )));
        }
        Ok(Self {
            ws,
            out: Output::default(),
        })
    }

    async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(channel);
        msg.extend_from_slice(data);
        self.ws
            .send(Message::Binary(msg.into()))
            .await
            .map_err(|e| CriError::Stream(format!("sending on channel {channel}: {e}")))
    }

    /// Writes `data` to the process's stdin.
    pub async fn stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data).await
    }

    /// Resizes the terminal (tty sessions only).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let json = format!(r#"{{"Width":{width},"Height":{height}}}"#);
        self.send(RESIZE, json.as_bytes()).await
    }

    /// Everything received so far.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// Receives one message (or nothing within `wait`) into the output;
    /// false once the connection has ended.
    async fn pump(&mut self, wait: Duration) -> Result<bool> {
        if self.out.closed {
            return Ok(false);
        }
        let msg = match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => return Ok(true),
            Ok(None) => {
                self.out.closed = true;
                return Ok(false);
            }
            Ok(Some(Err(e))) => {
                // A server that drops the TCP connection after its status has said all.
                self.out.closed = true;
                if self.out.status.is_some() {
                    return Ok(false);
                }
                return Err(CriError::Stream(format!("receiving: {e}")));
            }
            Ok(Some(Ok(m))) => m,
        };
        let data: Vec<u8> = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => {
                self.out.closed = true;
                return Ok(false);
            }
            _ => return Ok(true),
        };
        let Some((&channel, payload)) = data.split_first() else {
            return Ok(true);
        };
        match channel {
            STDOUT => self.out.stdout.extend_from_slice(payload),
            STDERR => self.out.stderr.extend_from_slice(payload),
            STATUS if !payload.is_empty() => {
                let v = serde_json::from_slice(payload).map_err(|e| {
                    CriError::Stream(format!(
                        "status {:?}: {e}",
                        String::from_utf8_lossy(payload)
                    ))
                })?;
                self.out.status = Some(v);
            }
            _ => {}
        }
        Ok(true)
    }

    /// Receives until `done(output)` holds; the output then.
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Output) -> bool,
    ) -> Result<&Output> {
        let start = Instant::now();
        while !done(&self.out) {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() || !self.pump(left).await? {
                if done(&self.out) {
                    break;
                }
                return Err(CriError::Stream(format!(
                    "{what}: not seen after {:?}{}; stdout {:?}, stderr {:?}, status {:?}",
                    start.elapsed(),
                    if self.out.closed { " (closed)" } else { "" },
                    self.out.stdout_text(),
                    self.out.stderr_text(),
                    self.out.status
                )));
            }
        }
        Ok(&self.out)
    }

    /// Receives until the status arrives and the connection ends (or `timeout`).
    pub async fn finish(&mut self, timeout: Duration) -> Result<Output> {
        self.until("the end of the stream", timeout, |o| {
            o.status.is_some() && o.closed
        })
        .await
        .cloned()
    }

    /// Closes the connection (an attach session ends; the container goes on).
    pub async fn close(mut self) -> Result<()> {
        self.ws
            .close(None)
            .await
            .map_err(|e| CriError::Stream(format!("closing: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(
            exit_code(&json!({"metadata": {}, "status": "Success"})),
            Some(0)
        );
        let failed = json!({
            "metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: exit status 5",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "5"}]}
        });
        assert_eq!(exit_code(&failed), Some(5));
        let internal = json!({"status": "Failure", "message": "boom"});
        assert_eq!(exit_code(&internal), None);
    }

    #[test]
    fn urls_become_websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:43211/exec/AbC").unwrap(),
            (
                "ws://127.0.0.1:43211/exec/AbC".into(),
                "127.0.0.1:43211".into()
            )
        );
        assert!(websocket_url("https://127.0.0.1:1/exec/x").is_err());
        assert!(websocket_url("http:///exec/x").is_err());
        assert!(websocket_url("http://host/exec/x").is_err());
    }
}
