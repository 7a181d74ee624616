//! One session: the worker that runs it, its rules, the table of live
//! sessions and the pool of worker threads.

pub mod flow;
pub mod pool;
pub mod run;
pub mod table;
pub mod writer;
