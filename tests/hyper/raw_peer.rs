//! An HTTP/2 server at the frame level, on 127.0.0.1, for what a real
//! server hides: the client's settings, window updates and `PING`s as they
//! come off the wire, and a peer that stops answering pings.
//!
//! It reads the client's preface, then every frame, and reports each one
//! on a channel. It answers as told: its own
//! `SETTINGS` at once or later, `PING` acknowledgements or silence, and a
//! `200` with no body to the requests it is told to answer.
#![cfg(feature = "hyper")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const HEADERS: u8 = 0x1;
pub const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame from the client.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// An acknowledgement: a `SETTINGS` or `PING` with the ACK flag (the
    /// same bit is END_STREAM on other frames).
    pub fn is_ack(&self) -> bool {
        matches!(self.kind, SETTINGS | PING) && self.flags & ACK != 0
    }

    /// The parameters of a `SETTINGS` frame, in order.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        assert_eq!(self.kind, SETTINGS);
        self.payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// The increment of a `WINDOW_UPDATE` frame.
    pub fn increment(&self) -> u32 {
        assert_eq!(self.kind, WINDOW_UPDATE);
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }
}

/// How the peer behaves.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// Send the server's (empty) `SETTINGS` as soon as a connection opens.
    pub settings_at_once: bool,
    /// Acknowledge the client's `PING`s.
    pub ack_pings: bool,
    /// Answer each request with a `200` and no body.
    pub answer: bool,
}

pub struct RawPeer {
    pub addr: SocketAddr,
    pub frames: mpsc::UnboundedReceiver<Frame>,
    writers: Arc<Mutex<Vec<Arc<Mutex<OwnedWriteHalf>>>>>,
    answer: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RawPeer {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, frames) = mpsc::unbounded_channel();
        let writers = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(AtomicBool::new(behaviour.answer));
        let task = tokio::spawn({
            let (writers, answer) = (writers.clone(), answer.clone());
            async move {
                let mut tasks = Vec::new();
                loop {
                    let Ok((io, _)) = listener.accept().await else {
                        break;
                    };
                    let (mut read, write) = io.into_split();
                    let write = Arc::new(Mutex::new(write));
                    writers.lock().await.push(write.clone());
                    let (report, answer) = (report.clone(), answer.clone());
                    tasks.push(AbortOnDrop(tokio::spawn(async move {
                        let mut preface = [0; PREFACE.len()];
                        if read.read_exact(&mut preface).await.is_err() || preface != PREFACE {
                            return;
                        }
                        if behaviour.settings_at_once {
                            send(&write, SETTINGS, 0, 0, &[]).await;
                        }
                        while let Some(frame) = read_frame(&mut read).await {
                            // Reported before it is answered: whatever the
                            // client saw come back, the test sees here.
                            if report.send(frame.clone()).is_err() {
                                return;
                            }
                            match frame.kind {
                                SETTINGS if !frame.is_ack() => {
                                    send(&write, SETTINGS, ACK, 0, &[]).await;
                                }
                                PING if !frame.is_ack() && behaviour.ack_pings => {
                                    send(&write, PING, ACK, 0, &frame.payload).await;
                                }
                                HEADERS if answer.load(Ordering::SeqCst) => {
                                    // `:status: 200`, HPACK's static entry 8;
                                    // END_STREAM | END_HEADERS.
                                    send(&write, HEADERS, 0x5, frame.stream, &[0x88]).await;
                                }
                                _ => {}
                            }
                        }
                    })));
                }
            }
        });
        Self {
            addr,
            frames,
            writers,
            answer,
            task,
        }
    }

    /// Whether requests from now on are answered.
    pub fn answer(&self, answer: bool) {
        self.answer.store(answer, Ordering::SeqCst);
    }

    /// Sends the server's `SETTINGS` with these parameters on connection
    /// `connection`.
    pub async fn send_settings(&self, connection: usize, settings: &[(u16, u32)]) {
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        let write = self.writers.lock().await[connection].clone();
        send(&write, SETTINGS, 0, 0, &payload).await;
    }

    /// The next frame of `kind` (acknowledgements left out), skipping the
    /// others.
    pub async fn next(&mut self, kind: u8) -> Frame {
        loop {
            let frame = self.frames.recv().await.expect("the peer is running");
            if frame.kind == kind && !frame.is_ack() {
                return frame;
            }
        }
    }

    /// Every frame received so far.
    pub fn drain(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Ok(frame) = self.frames.try_recv() {
            frames.push(frame);
        }
        frames
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_frame(read: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Frame> {
    let mut head = [0; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    read.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

async fn send(write: &Mutex<OwnedWriteHalf>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    // The client may be gone; the test sees that on its side.
    let _ = write.lock().await.write_all(&frame).await;
}
