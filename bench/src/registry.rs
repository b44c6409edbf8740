//! A read-only OCI distribution endpoint on 127.0.0.1 serving the busybox test image.
//!
//! containerd 2.1's CRI restore (CreateContainer with a checkpoint archive as the image) always
//! *pulls* the checkpoint's base image by its repo digest, even when the image is on the node, and
//! nothing can be pulled here. containerd speaks plain HTTP to `localhost:<port>`, so naming the
//! image `localhost:<port>/...` and answering these few GETs is enough for its restore to run as it
//! does against a real registry: manifest fetched, blobs found locally, nothing downloaded.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Registry {
    pub port: u16,
}

impl Registry {
    /// Serves the OCI layout in `layout` (an unpacked image tarball) until the process exits.
    pub fn serve(layout: &Path) -> Result<Registry> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the bench registry")?;
        let port = listener.local_addr()?.port();
        let layout = layout.to_path_buf();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let layout = layout.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &layout);
                });
            }
        });
        Ok(Registry { port })
    }
}

/// The manifest digest the layout's index names (the image's only manifest).
fn index_manifest(layout: &Path) -> Option<(String, String)> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let m = &index["manifests"][0];
    Some((m["digest"].as_str()?.to_string(), m["mediaType"].as_str()?.to_string()))
}

fn blob(layout: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    // Only plain hex: the request path must not walk out of the layout.
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let p = layout.join("blobs/sha256").join(hex);
    p.is_file().then_some(p)
}

fn handle(mut conn: TcpStream, layout: &Path) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are not needed; read them off so the client is not reset mid-request.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head = method == "HEAD";
    let respond = |conn: &mut TcpStream, status: &str, ctype: &str, digest: Option<&str>, body: &[u8]| -> Result<()> {
        let mut h = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(d) = digest {
            h.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
        }
        h.push_str("Docker-Distribution-API-Version: registry/2.0\r\n\r\n");
        conn.write_all(h.as_bytes())?;
        if !head {
            conn.write_all(body)?;
        }
        Ok(())
    };
    if path == "/v2/" || path == "/v2" {
        return respond(&mut conn, "200 OK", "application/json", None, b"{}");
    }
    let found = if let Some((_, reference)) = path.strip_prefix("/v2/").and_then(|p| p.rsplit_once("/manifests/")) {
        let (digest, media) = match index_manifest(layout) {
            Some((d, m)) if reference == d || !reference.starts_with("sha256:") => (d, m),
            _ => (reference.to_string(), "application/vnd.oci.image.manifest.v1+json".to_string()),
        };
        blob(layout, &digest).map(|p| (p, media, digest))
    } else if let Some((_, digest)) = path.strip_prefix("/v2/").and_then(|p| p.rsplit_once("/blobs/")) {
        blob(layout, digest).map(|p| (p, "application/octet-stream".to_string(), digest.to_string()))
    } else {
        None
    };
    match found {
        Some((p, media, digest)) => respond(&mut conn, "200 OK", &media, Some(&digest), &std::fs::read(p)?),
        None => respond(&mut conn, "404 Not Found", "application/json", None, br#"{"errors":[{"code":"NOT_FOUND"}]}"#),
    }
}
