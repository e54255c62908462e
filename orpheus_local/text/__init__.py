"""The text of a request: emotive tags, and splitting long text into parts."""
