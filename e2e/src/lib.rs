//! Harnesses for whole-system tests.
