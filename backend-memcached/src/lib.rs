//! memcached backend (in progress).
