-- An erasure (LeadsErased on privacy.erasures) deletes the per-buyer duplicate index's
-- rows of the erased leads: found by lead.
create index buyer_consumers_by_lead on buyer_consumers (lead_id);
