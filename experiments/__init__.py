"""Research code: experiments measured on phantoms, not part of the product (nothing in kernel/ or train_offline/
imports it). Each module says what it measured and where its results are logged (docs/history/)."""
