//! The name server: routes from topics to broker groups.
