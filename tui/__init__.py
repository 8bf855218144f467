"""The Textual operator console (`appliance console`): `console.Console` over `link.Link`."""
