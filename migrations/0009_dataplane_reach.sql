-- What the resources sent to each dataplane configure, so that a resource's propagation
-- status counts only the proxies it reaches: the services it holds caller-side resources of
-- (listeners, routes, clusters, endpoints), and whether it holds its own service's inbound
-- side. The xDS server writes them when they change; they are not in the column list of the
-- `dataplanes_changed` trigger, so they bump no mesh revision.
ALTER TABLE dataplanes
    ADD COLUMN calls text[] NOT NULL DEFAULT '{}',
    ADD COLUMN serves boolean NOT NULL DEFAULT false;
