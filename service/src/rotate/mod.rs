//! The rotation engine.
