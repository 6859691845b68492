//! Placeholder: the load harness (issue 5), filled in by its owner.
