//! Every `unsafe` block of the crate, each with its `// SAFETY:` justification.
