//! Reading, writing and wiping the two label copies on a member device.
//!
//! The primary copy is the first 4096 bytes of the device; the backup copy is the last 4096
//! bytes of the device as it was when the label was written (`member_size`). Labels are
//! written a whole block at a time: with blocks larger than 4 KiB the rest of that block is
//! zero. Nothing here decides what a pool is; `pool.rs` does that with what these functions
//! report.

use crate::{BlockDevice, BlockError, IoBuf};

use super::label::{LABEL_SIZE, LabelError, MemberLabel, label_region};

/// Which of the two label copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabelCopy {
    /// At the start of the device.
    Primary,
    /// In the last 4 KiB of the device.
    Backup,
}

/// What the two label locations of one device hold.
#[derive(Debug, Clone)]
pub(crate) struct LabelCopies {
    /// The copy at the start of the device.
    pub primary: Result<MemberLabel, LabelError>,
    /// The copy at the end of the device (at the current end, or at the end the labels
    /// record if the device has grown since).
    pub backup: Result<MemberLabel, LabelError>,
}

impl LabelCopies {
    /// The valid copies.
    pub fn valid(&self) -> impl Iterator<Item = &MemberLabel> {
        self.primary.iter().chain(self.backup.iter())
    }

    /// The valid copy with the highest generation (the primary on a tie).
    pub fn best(&self) -> Option<&MemberLabel> {
        self.valid()
            .fold(None, |best: Option<&MemberLabel>, l| match best {
                Some(b) if b.generation >= l.generation => Some(b),
                _ => Some(l),
            })
    }

    /// A valid copy of generation `generation`, if any.
    pub fn at_generation(&self, generation: u64) -> Option<&MemberLabel> {
        self.valid().find(|l| l.generation == generation)
    }

    /// Whether both copies are valid and of generation `generation`.
    pub fn both_at(&self, generation: u64) -> bool {
        matches!((&self.primary, &self.backup), (Ok(p), Ok(b))
            if p.generation == generation && b.generation == generation)
    }

    /// Whether either location carries the label magic (a valid or a damaged label).
    pub fn any_magic(&self) -> bool {
        !matches!(self.primary, Err(LabelError::NotAMember))
            || !matches!(self.backup, Err(LabelError::NotAMember))
    }
}

/// Blocks in one label region of `dev`.
fn region_blocks(dev: &dyn BlockDevice) -> u64 {
    label_region(dev.block_size()) / u64::from(dev.block_size())
}

/// Reads the label region starting at `lba` and decodes the label found at byte `at` in it.
async fn read_copy(
    dev: &dyn BlockDevice,
    lba: u64,
    at: usize,
) -> Result<Result<MemberLabel, LabelError>, BlockError> {
    // At most 64 KiB / 512 = 128 blocks.
    let n = region_blocks(dev) as u32;
    let buf = dev.read(lba, n).await?;
    Ok(match buf.get(at..at + LABEL_SIZE) {
        Some(bytes) => MemberLabel::decode(bytes),
        None => Err(LabelError::TooShort(buf.len().saturating_sub(at))),
    })
}

/// Reads both label copies of `dev`. Only I/O failures are errors; what the copies hold
/// (nothing, damage, a label) is in the result.
pub(crate) async fn read_labels(dev: &dyn BlockDevice) -> Result<LabelCopies, BlockError> {
    let bs = u64::from(dev.block_size());
    let region = label_region(dev.block_size());
    let rb = region_blocks(dev);
    if dev.num_blocks() < 2 * rb {
        // Too small to hold two labels: it cannot be a member.
        return Ok(LabelCopies {
            primary: Err(LabelError::NotAMember),
            backup: Err(LabelError::NotAMember),
        });
    }
    // Fits: region <= 64 KiB.
    let tail = region as usize - LABEL_SIZE;
    let primary = read_copy(dev, 0, 0).await?;
    let mut backup = read_copy(dev, dev.num_blocks() - rb, tail).await?;
    if backup.is_err() {
        // The device may have grown since the labels were written: look where they say the
        // backup is.
        if let Ok(p) = &primary {
            let size = p.member_size;
            if size != dev.size_bytes()
                && size.is_multiple_of(bs)
                && size >= 2 * region
                && size <= dev.size_bytes()
            {
                let alt = read_copy(dev, size / bs - rb, tail).await?;
                if alt.is_ok() {
                    backup = alt;
                }
            }
        }
    }
    Ok(LabelCopies { primary, backup })
}

/// Writes one copy of `label` to `dev` (not flushed). The backup goes to the end of a
/// device of `label.member_size` bytes, which the caller sets to the device's size.
pub(crate) async fn write_label(
    dev: &dyn BlockDevice,
    label: &MemberLabel,
    copy: LabelCopy,
) -> Result<(), WriteLabelError> {
    let bytes = label.encode().map_err(WriteLabelError::Label)?;
    let bs = u64::from(dev.block_size());
    let region = label_region(dev.block_size());
    // Fits: region <= 64 KiB.
    let mut buf = IoBuf::zeroed(region as usize);
    let (lba, at) = match copy {
        LabelCopy::Primary => (0, 0),
        LabelCopy::Backup => (
            (label.member_size - region) / bs,
            region as usize - LABEL_SIZE,
        ),
    };
    buf[at..at + LABEL_SIZE].copy_from_slice(&bytes);
    dev.write(lba, buf, false)
        .await
        .map_err(WriteLabelError::Io)
}

/// Why [`write_label`] failed.
#[derive(Debug)]
pub(crate) enum WriteLabelError {
    /// The label did not validate.
    Label(LabelError),
    /// The device write failed.
    Io(BlockError),
}

/// Zeroes both label locations of `dev` (the primary, and the backup at the device's end),
/// and, if given, the backup location of a device of `recorded_size` bytes. Not flushed.
pub(crate) async fn wipe_labels(
    dev: &dyn BlockDevice,
    recorded_size: Option<u64>,
) -> Result<(), BlockError> {
    let bs = u64::from(dev.block_size());
    let rb = region_blocks(dev);
    if dev.num_blocks() < 2 * rb {
        return Ok(());
    }
    dev.write(0, IoBuf::zeroed((rb * bs) as usize), false)
        .await?;
    dev.write(
        dev.num_blocks() - rb,
        IoBuf::zeroed((rb * bs) as usize),
        false,
    )
    .await?;
    if let Some(size) = recorded_size {
        let end = size / bs;
        if size.is_multiple_of(bs) && end >= 2 * rb && end < dev.num_blocks() {
            dev.write(end - rb, IoBuf::zeroed((rb * bs) as usize), false)
                .await?;
        }
    }
    Ok(())
}
