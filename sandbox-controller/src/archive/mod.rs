//! Checkpoint archive format (see mod docs once written).
