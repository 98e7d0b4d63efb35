//! The host daemon: sockets, admin API, access rules, encrypted SQLite store, sandboxes, audit.
//! Nothing here knows about signals of a container or PID 1.
