//! Reading the small files a config names (keys, the config itself) so that
//! a wrong path cannot hang or swamp the reader: the file must be a regular
//! file (a FIFO would block, a device never end), and no longer than a
//! bound.

use std::{
    fs::OpenOptions,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// The whole of `path`, which must be a regular file of at most `limit`
/// bytes. Opened without blocking, so naming a FIFO fails at once.
pub fn read_small(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if metadata.len() > limit {
        return Err(too_long(limit));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // A file that grows while read stops at the bound all the same.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_long(limit));
    }
    Ok(bytes)
}

fn too_long(limit: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("longer than {limit} bytes"))
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt};

    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = std::env::temp_dir().join(format!("redirector-read-small-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_small(&file, 10).unwrap(), b"0123456789");
        assert_eq!(read_small(&file, 9).unwrap_err().to_string(), "longer than 9 bytes");

        let fifo = dir.join("fifo");
        let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert_eq!(read_small(&fifo, 10).unwrap_err().to_string(), "not a regular file");
        assert_eq!(read_small(Path::new("/dev/zero"), 10).unwrap_err().to_string(), "not a regular file");
        assert_eq!(read_small(&dir, 10).unwrap_err().to_string(), "not a regular file");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_small(&file, 10).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
