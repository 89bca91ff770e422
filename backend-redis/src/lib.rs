//! redis backend (in progress).
