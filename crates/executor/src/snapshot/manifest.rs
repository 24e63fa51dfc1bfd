//! The snapshot's manifest: every entry of the workspace at the snapshot (kind, mode, size,
//! times, the digest of a file's bytes), how it is written and read back.

use sha2::Digest;
use std::collections::{BTreeMap, HashSet};

use sha2::Sha256;

use super::MAGIC;

/// The stat key of a file: unchanged key, unchanged content (unless racy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) size: u64,
    pub(super) mtime: i128,
    pub(super) ctime: i128,
    pub(super) ino: u64,
    pub(super) mode: u32,
}

impl Key {
    pub(super) fn of(stat: &rustix::fs::Stat) -> Self {
        Self {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime: i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
            ctime: i128::from(stat.st_ctime) * 1_000_000_000 + i128::from(stat.st_ctime_nsec),
            ino: stat.st_ino,
            mode: stat.st_mode & 0o7777,
        }
    }
}

/// One recorded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Dir {
        mode: u32,
    },
    File {
        key: Key,
        /// `None`: over `max_file_bytes`, recorded by key only.
        hash: Option<[u8; 32]>,
        racy: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// A recorded workspace.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub(super) taken_ns: i128,
    pub(super) entries: BTreeMap<Vec<u8>, Node>,
}

impl Manifest {
    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn hashes(&self) -> HashSet<[u8; 32]> {
        self.entries
            .values()
            .filter_map(|node| match node {
                Node::File { hash, .. } => *hash,
                _ => None,
            })
            .collect()
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.taken_ns.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (path, node) in &self.entries {
            let bytes = |out: &mut Vec<u8>, value: &[u8]| {
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            };
            match node {
                Node::Dir { mode } => {
                    out.push(0);
                    bytes(&mut out, path);
                    out.extend_from_slice(&mode.to_le_bytes());
                }
                Node::File { key, hash, racy } => {
                    out.push(if hash.is_some() { 1 } else { 3 });
                    bytes(&mut out, path);
                    out.extend_from_slice(&key.mode.to_le_bytes());
                    out.extend_from_slice(&key.size.to_le_bytes());
                    out.extend_from_slice(&key.mtime.to_le_bytes());
                    out.extend_from_slice(&key.ctime.to_le_bytes());
                    out.extend_from_slice(&key.ino.to_le_bytes());
                    out.push(u8::from(*racy));
                    if let Some(hash) = hash {
                        out.extend_from_slice(hash);
                    }
                }
                Node::Symlink { target } => {
                    out.push(2);
                    bytes(&mut out, path);
                    bytes(&mut out, target);
                }
            }
        }
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    pub(super) fn decode(data: &[u8]) -> Result<Self, String> {
        let cut = || "the snapshot manifest is cut short".to_owned();
        if data.len() < MAGIC.len() + 32 || !data.starts_with(MAGIC) {
            return Err("the snapshot manifest does not start with its marker".to_owned());
        }
        let (body, sum) = data.split_at(data.len() - 32);
        let expected: [u8; 32] = Sha256::digest(body).into();
        if expected.as_slice() != sum {
            return Err("the snapshot manifest's checksum does not match".to_owned());
        }
        let mut rest = &body[MAGIC.len()..];
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(cut());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
            let mut out = [0u8; N];
            out.copy_from_slice(&bytes[..N]);
            out
        }
        let taken_ns = i128::from_le_bytes(array(take(16)?));
        let count = u64::from_le_bytes(array(take(8)?));
        let mut entries = BTreeMap::new();
        for _ in 0..count {
            let kind = take(1)?[0];
            let len = usize::try_from(u64::from_le_bytes(array(take(8)?))).map_err(|_| cut())?;
            let path = take(len)?.to_vec();
            let node = match kind {
                0 => Node::Dir {
                    mode: u32::from_le_bytes(array(take(4)?)),
                },
                1 | 3 => {
                    let mode = u32::from_le_bytes(array(take(4)?));
                    let size = u64::from_le_bytes(array(take(8)?));
                    let mtime = i128::from_le_bytes(array(take(16)?));
                    let ctime = i128::from_le_bytes(array(take(16)?));
                    let ino = u64::from_le_bytes(array(take(8)?));
                    let racy = take(1)?[0] != 0;
                    let hash = if kind == 1 {
                        Some(array(take(32)?))
                    } else {
                        None
                    };
                    Node::File {
                        key: Key {
                            size,
                            mtime,
                            ctime,
                            ino,
                            mode,
                        },
                        hash,
                        racy,
                    }
                }
                2 => {
                    let len =
                        usize::try_from(u64::from_le_bytes(array(take(8)?))).map_err(|_| cut())?;
                    Node::Symlink {
                        target: take(len)?.to_vec(),
                    }
                }
                other => return Err(format!("unknown entry kind {other} in the manifest")),
            };
            entries.insert(path, node);
        }
        Ok(Self { taken_ns, entries })
    }
}
