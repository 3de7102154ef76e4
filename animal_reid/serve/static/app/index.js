"use strict";
// The review page: sign-in, batch upload, the queue and its comparison view, groups, single-photo identify.

setupSignin();
fillSpecies("species-list", "queue-species");
setupUpload();
setupQueue();
loadGroups();
setupIdentify();
