package db

// NewProvider exposes the goose provider Migrate uses, for tests of the Down migrations.
var NewProvider = newProvider
