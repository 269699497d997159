"""HTTP layer: parse, call the domain, render. Routes are declared as ``Endpoint`` lists."""
