//! One session: the worker loop that relays it, its rules, its client side
//! (a byte stream or channels), what it reads into, the clock that wakes it at its deadlines,
//! the table of live sessions and the pool of worker threads.

pub mod client;
pub mod clock;
pub mod outbox;
pub mod pool;
pub mod read_buffer;
pub mod relay;
pub mod rules;
pub mod run;
pub mod table;
