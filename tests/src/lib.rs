//! End-to-end tests of whole flows live in `tests/`; this library is empty.
