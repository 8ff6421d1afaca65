"""Pure decisions of waitroom: no I/O, no clock, no logging. Time and ids are arguments."""
